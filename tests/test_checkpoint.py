"""Checkpoints: interrupted-and-resumed fits end bitwise where uninterrupted ones end.

The epochs of a checkpointed fit run in chunks through one compiled program and each
epoch draws its shuffle from ``fold_in(key, epoch)``, so on CPU the resumed fit must be
bitwise equal to the uninterrupted one: tests use ``assert_array_equal``, no tolerance.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlefit
import mlefit._checkpoint as ckpt

RNG = np.random.default_rng(3)
N, D = 501, 3
X = RNG.normal(size=(N, D))
Y = (RNG.uniform(size=N) < 1 / (1 + np.exp(-(X @ np.array([1.0, -2.0, 0.5]))))).astype(float)


def logistic(p, x, y):
    z = x @ p["b"] + p["c"]
    return y * z - jnp.logaddexp(0.0, z) - 1e-3 * p["s"] ** 2  # s: a constrained extra


def init():
    return {"b": jnp.zeros(D), "c": 0.0, "s": mlefit.Positive(0.5)}


@functools.cache
def adam():
    return optax.adam(1e-2)


KW = dict(optimizer=None, batch_size=64, epochs=6, key=jax.random.key(11))


def _fit(data=(X, Y), **kw):
    return mlefit.fit(logistic, data, init(), **({**KW, "optimizer": adam()} | kw))


class Crash(Exception):
    pass


def _crash_after(monkeypatch, n_saves: int):
    """Makes the fit die right after its ``n_saves``-th checkpoint is on disk."""
    real, count = ckpt.save_checkpoint, [0]

    def save(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] == n_saves:
            raise Crash

    monkeypatch.setattr(ckpt, "save_checkpoint", save)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(a.history, b.history)
    assert float(a.nll) == float(b.nll) and int(a.steps) == int(b.steps)
    assert a.optimizer_status == b.optimizer_status


@pytest.fixture(scope="module")
def uninterrupted():
    return _fit()


def _checkpoint_at(path, epoch: int, monkeypatch):
    """A checkpoint after ``epoch`` of the 6 epochs (one compiled program for all tests:
    the epoch count is part of the compiled shapes)."""
    _crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        _fit(checkpoint=path, checkpoint_every=epoch)
    monkeypatch.undo()


def test_interrupted_and_resumed_fit_is_bitwise_uninterrupted(tmp_path, monkeypatch,
                                                               uninterrupted):
    path = tmp_path / "fit.ckpt"
    _crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        _fit(checkpoint=path, checkpoint_every=3)  # dies after epoch 3 of 6
    monkeypatch.undo()
    info = mlefit.checkpoint_info(path)
    assert (info["epoch"], info["epochs"], info["steps"]) == (3, 6, 3 * 8)
    resumed = _fit(resume_from=path, key=None)  # the key comes from the checkpoint
    _assert_same(resumed, uninterrupted)


def test_ctrl_c_then_resume(tmp_path, monkeypatch, uninterrupted):
    path = tmp_path / "i.ckpt"
    real = ckpt.save_checkpoint

    def save_then_ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_ctrl_c)
    stopped = _fit(checkpoint=path, checkpoint_every=2)
    monkeypatch.undo()
    assert stopped.optimizer_status == mlefit.Status.INTERRUPTED and int(stopped.steps) == 16
    assert np.isnan(stopped.history_buffer[2:]).all()  # epochs 3..6 never ran
    _assert_same(_fit(resume_from=path), uninterrupted)


def test_checkpointing_does_not_change_the_fit(tmp_path, uninterrupted):
    res = _fit(checkpoint=tmp_path / "c.ckpt", checkpoint_every=1)
    _assert_same(res, uninterrupted)
    assert mlefit.checkpoint_info(tmp_path / "c.ckpt")["epoch"] == 6
    # Resuming a finished fit only recomputes the final NLL and gradient.
    _assert_same(_fit(resume_from=tmp_path / "c.ckpt"), uninterrupted)


def test_stream_fit_resumes_bitwise(tmp_path, monkeypatch):
    s = mlefit.ArrayStream((X, Y), chunk_size=128)  # shuffled chunks and rows within
    ref = _fit(s, epochs=4)
    _crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        _fit(s, epochs=4, checkpoint=tmp_path / "s.ckpt", checkpoint_every=1)
    monkeypatch.undo()
    assert mlefit.checkpoint_info(tmp_path / "s.ckpt")["kind"] == "stream"
    _assert_same(_fit(s, epochs=4, resume_from=tmp_path / "s.ckpt"), ref)


def test_header_describes_the_fit(tmp_path, monkeypatch):
    path = tmp_path / "h.ckpt"
    _checkpoint_at(path, 2, monkeypatch)
    info = mlefit.checkpoint_info(path)
    assert info["format"] == 1 and info["model"] == "logistic" and info["kind"] == "minibatch"
    assert info["params"] == [["b", [3], "float64", "Identity"], ["c", [], "float64", "Identity"],
                              ["s", [], "float64", "Positive"]]
    assert info["data"] == {"n_obs": N, "arrays": [[[3], "float64"], [[], "float64"]]}
    assert info["batch_size"] == 64 and "ScaleByAdamState" in info["optimizer"]["structure"]
    with open(path, "rb") as f:  # a text header line, readable without mlefit
        assert f.readline() == b"MLEFIT-CHECKPOINT\n"
        assert json.loads(f.readline())["epoch"] == 2


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "k.ckpt"
    _checkpoint_at(path, 1, monkeypatch)
    old = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _fit(checkpoint=path)
    monkeypatch.undo()
    assert path.read_bytes() == old  # never overwritten by the half-written one
    assert os.listdir(tmp_path) == ["k.ckpt"]  # and no temporary file left behind


def test_corrupted_checkpoints(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    _checkpoint_at(path, 1, monkeypatch)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="is corrupted: its payload has"):
        _fit(resume_from=path)
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # one flipped bit
    with pytest.raises(ValueError, match="truncated or modified"):
        mlefit.checkpoint_info(path)
    path.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ValueError, match="is not an mlefit checkpoint"):
        _fit(resume_from=path)
    with pytest.raises(FileNotFoundError, match="resume_from: no checkpoint file"):
        _fit(resume_from=tmp_path / "missing.ckpt")


def test_mismatched_checkpoint_names_what_differs(tmp_path, monkeypatch):
    path = tmp_path / "m.ckpt"
    _checkpoint_at(path, 1, monkeypatch)

    def other_model(p, x, y):
        return logistic(p, x, y)

    with pytest.raises(ValueError, match="model: checkpoint has \"logistic\", this fit has "
                                         "\"other_model\""):
        mlefit.fit(other_model, (X, Y), init(), **{**KW, "optimizer": adam()},
                   resume_from=path)
    wide = {"b": jnp.zeros(D + 1), "c": 0.0, "s": mlefit.Positive(0.5)}
    with pytest.raises(ValueError, match="params: checkpoint has .*\\[3\\].*this fit has .*\\[4"):
        mlefit.fit(logistic, (np.hstack([X, X[:, :1]]), Y), wide,
                   **{**KW, "optimizer": adam()}, resume_from=path)
    with pytest.raises(ValueError, match="optimizer: checkpoint has .*ScaleByAdamState"):
        _fit(optimizer=optax.sgd(1e-2), resume_from=path)
    with pytest.raises(ValueError, match="data: checkpoint has .*501.*this fit has .*500"):
        _fit((X[:500], Y[:500]), resume_from=path)
    with pytest.raises(ValueError, match="batch_size: checkpoint has 64, this fit has 32"):
        _fit(batch_size=32, resume_from=path)
    with pytest.raises(ValueError, match="key: differs from the key of the checkpoint"):
        _fit(key=jax.random.key(12), resume_from=path)


def test_bad_checkpoint_options(tmp_path, monkeypatch):
    path = tmp_path / "b.ckpt"
    _checkpoint_at(path, 2, monkeypatch)
    with pytest.raises(ValueError, match="epochs: the checkpoint .* has already run 2 epochs"):
        _fit(epochs=1, resume_from=path)
    with pytest.raises(ValueError, match="checkpoint: only minibatch fits"):
        mlefit.fit(logistic, (X, Y), init(), checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint_every: must be a positive int"):
        _fit(checkpoint=path, checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint: the folder of"):
        _fit(checkpoint=tmp_path / "no" / "such" / "dir.ckpt")
