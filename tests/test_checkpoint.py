"""Checkpoints: interrupted-and-resumed fits end bitwise where uninterrupted ones end.

The epochs of a checkpointed fit run in chunks through one compiled program and each
epoch draws its shuffle from ``fold_in(key, epoch)``, so on CPU the resumed fit must be
bitwise equal to the uninterrupted one: tests use ``assert_array_equal``, no tolerance.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlefit
import mlefit._checkpoint as ckpt
from mlefit import _fingerprint

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
    prints = info["fingerprint"]
    assert prints["model"].startswith("jaxpr:") and prints["jax"] == jax.__version__
    assert prints["data"]["n_obs"] == N and prints["data"]["rows"] == 256
    # the checksum of all values: the float64 words of X and Y summed as integers mod 2**64
    words = [int(w) for a in (X, Y) for w in np.ascontiguousarray(a).view(np.uint64).ravel()]
    assert prints["data"]["bit_sum"] == sum(words) % 2**64
    with open(path, "rb") as f:  # a text header line, readable without mlefit
        assert f.readline() == b"MLEFIT-CHECKPOINT\n"
        assert json.loads(f.readline())["epoch"] == 2


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, uninterrupted):
    path = tmp_path / "k.ckpt"
    _checkpoint_at(path, 1, monkeypatch)
    old = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _fit(checkpoint=path)  # all six writes fail: one warning, the fit goes on
    monkeypatch.undo()
    (w,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert re.search(r"checkpoint: cannot write '.*k\.ckpt' \(OSError: disk full\); the fit "
                     r"goes on", str(w.message))
    _assert_same(res, uninterrupted)  # the work is not lost
    assert path.read_bytes() == old  # never overwritten by the half-written one
    assert os.listdir(tmp_path) == ["k.ckpt"]  # and no temporary file left behind


def test_a_write_failing_mid_fit_warns_once_and_the_next_one_lands(tmp_path, monkeypatch,
                                                                   uninterrupted):
    path = tmp_path / "w.ckpt"
    real, calls = ckpt.save_checkpoint, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) in (2, 4):
            raise PermissionError(13, "Permission denied")
        real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    with pytest.warns(RuntimeWarning) as record:
        res = _fit(checkpoint=path, checkpoint_every=1)
    assert len(calls) == 6 and len(record) == 1  # two failures, one warning
    assert re.search(r"checkpoint: cannot write '.*w\.ckpt' \(PermissionError: \[Errno 13\] "
                     r"Permission denied\)", str(record[0].message))
    _assert_same(res, uninterrupted)
    assert mlefit.checkpoint_info(path)["epoch"] == 6  # the later writes landed


def _never_traced(p, x, y):
    raise AssertionError("the model was traced: the check came after compiling")


def test_checkpoint_path_is_checked_before_compiling(tmp_path, monkeypatch):
    kw = {**KW, "optimizer": adam()}
    with pytest.raises(ValueError, match=r"checkpoint: '.*' is a directory; give the path of a "
                                         r"file, e\.g\. '.*fit\.ckpt'"):
        mlefit.fit(_never_traced, (X, Y), init(), checkpoint=tmp_path, **kw)
    if os.geteuid() == 0:  # permissions do not stop root: a folder that is a file does
        (tmp_path / "file.txt").write_text("x")
        bad, reason = tmp_path / "file.txt" / "ckpt", r"is a file, not a directory"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        bad, reason = locked / "ckpt", r"cannot write into the folder of .*\(PermissionError"
    with pytest.raises(ValueError, match=f"checkpoint: .*{reason}"):
        mlefit.fit(_never_traced, (X, Y), init(), checkpoint=bad, **kw)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # an unwritable folder, even for root
    with pytest.raises(ValueError, match=r"checkpoint: cannot write into the folder of "
                                         r"'.*c\.ckpt' \(PermissionError: Permission denied\); "
                                         r"choose a writable folder"):
        mlefit.fit(_never_traced, (X, Y), init(), checkpoint=tmp_path / "c.ckpt", **kw)
    monkeypatch.undo()
    s = mlefit.ArrayStream((X, Y), chunk_size=128)  # the stream path checks it too
    with pytest.raises(ValueError, match=r"checkpoint: '.*' is a directory"):
        mlefit.fit(_never_traced, s, init(), checkpoint=tmp_path, **kw)
    assert os.listdir(tmp_path) in (["file.txt"], ["locked"])  # no probe file left behind
    with pytest.raises(ValueError, match=r"resume_check: expected one of 'all', 'model', "
                                         r"'shapes', got 'data'"):
        mlefit.fit(_never_traced, (X, Y), init(), resume_check="data", **kw)


def test_other_data_of_the_same_shapes_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "d.ckpt"
    _checkpoint_at(path, 3, monkeypatch)
    other = RNG.normal(size=(N, D))
    with pytest.raises(ValueError, match=r"resume_from: the checkpoint '.*d\.ckpt' was written "
                       r"for other data of the same shapes \(the checksum of 256 rows sampled "
                       r"at an even stride and the checksum of all values differ\)\. To "
                       r"continue from it on these data on purpose, pass resume_check='model'"):
        _fit((other, Y), resume_from=path)
    # One value changed, in a row the stride does not sample: the checksum of all values.
    assert 1 not in _fingerprint.strided_rows(N)
    edited = X.copy()
    edited[1, 2] += 1e-12
    with pytest.raises(ValueError, match=r"other data of the same shapes \(the checksum of all "
                                         r"values differs\)"):
        _fit((edited, Y), resume_from=path)
    with pytest.raises(ValueError, match=r"other data of the same shapes"):
        _fit(resume_from=path, weights=np.linspace(0.5, 1.5, N))  # weights are data too
    # On purpose: the model and shapes are checked, the data are not.
    res = _fit((other, Y), resume_from=path, resume_check="model")
    assert int(res.steps) == 6 * 8 and np.isfinite(float(res.nll))


def _edited_logistic():
    def logistic(p, x, y):  # the same name, another penalty
        z = x @ p["b"] + p["c"]
        return y * z - jnp.logaddexp(0.0, z) - 2e-3 * p["s"] ** 2

    return logistic


def test_an_edited_model_under_the_same_name_is_refused(tmp_path, monkeypatch, uninterrupted):
    path = tmp_path / "e.ckpt"
    _checkpoint_at(path, 3, monkeypatch)
    edited, kw = _edited_logistic(), {**KW, "optimizer": adam()}
    for check in ("all", "model"):
        with pytest.raises(ValueError, match=r"resume_from: the checkpoint '.*e\.ckpt' was "
                           r"written for another version of the model 'logistic' \(same name "
                           r"and shapes, but its JAX program for one observation differs: an "
                           r"edited body.*pass resume_check='shapes'"):
            mlefit.fit(edited, (X, Y), init(), resume_from=path, resume_check=check, **kw)
    with pytest.raises(ValueError, match=r"another version of the model 'logistic' .*, and "
                                         r"for other data of the same shapes"):
        mlefit.fit(edited, (X[::-1], Y), init(), resume_from=path, **kw)
    res = mlefit.fit(edited, (X, Y), init(), resume_from=path, resume_check="shapes", **kw)
    assert int(res.steps) == 6 * 8 and np.isfinite(float(res.nll))
    _assert_same(_fit(resume_from=path), uninterrupted)  # the model it was written for


def test_without_a_jaxpr_the_model_code_is_compared(tmp_path, monkeypatch):
    monkeypatch.setattr(_fingerprint, "model_fingerprint", lambda *a: None)
    path = tmp_path / "c.ckpt"
    _crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        _fit(checkpoint=path, checkpoint_every=3)
    assert mlefit.checkpoint_info(path)["fingerprint"]["model"].startswith("code:")
    with pytest.raises(ValueError, match=r"another version of the model 'logistic' \(same "
                                         r"name and shapes, but its code differs"):
        mlefit.fit(_edited_logistic(), (X, Y), init(), resume_from=path,
                   **{**KW, "optimizer": adam()})
    assert _fingerprint.code_hash(logistic) != _fingerprint.code_hash(_edited_logistic())
    assert _fingerprint.code_hash(logistic) == _fingerprint.code_hash(logistic)


def test_a_checkpoint_without_fingerprints_resumes_with_a_warning(tmp_path, monkeypatch,
                                                                  uninterrupted):
    """Checkpoints written before fingerprints were recorded: accepted, shapes checked."""
    path = tmp_path / "o.ckpt"
    _checkpoint_at(path, 3, monkeypatch)
    magic, header, payload = path.read_bytes().split(b"\n", 2)
    old = json.loads(header)
    del old["fingerprint"]
    path.write_bytes(magic + b"\n" + json.dumps(old).encode() + b"\n" + payload)
    with pytest.warns(RuntimeWarning, match=r"resume_from: the checkpoint '.*o\.ckpt' has no "
                      r"fingerprint of its data and model \(an older mlefit wrote it\)"):
        res = _fit(resume_from=path)
    _assert_same(res, uninterrupted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_same(_fit(resume_from=path, resume_check="shapes"), uninterrupted)


def test_a_stream_of_npy_files_rewritten_with_other_data_is_refused(tmp_path, monkeypatch):
    xs, ys = tmp_path / "X.npy", tmp_path / "y.npy"
    np.save(xs, X)
    np.save(ys, Y)
    s = mlefit.ArrayStream((str(xs), str(ys)), chunk_size=128)
    path = tmp_path / "s.ckpt"
    _crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        _fit(s, epochs=4, checkpoint=path)
    monkeypatch.undo()
    np.save(xs, X[::-1])  # same shape and dtype, other rows
    s = mlefit.ArrayStream((str(xs), str(ys)), chunk_size=128)
    with pytest.raises(ValueError, match=r"other data of the same shapes \(the checksum of 256 "
                                         r"rows sampled at an even stride differs\)"):
        _fit(s, epochs=4, resume_from=path)
    res = _fit(s, epochs=4, resume_from=path, resume_check="model")
    assert np.isfinite(float(res.nll)) and int(res.steps) == 4 * 8


_ID_PROBE = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import mlefit
from mlefit import _fingerprint
def logistic(p, x, y):
    z = x @ p["b"] + p["c"]
    return y * z - jnp.logaddexp(0.0, z) - 1e-3 * p["s"] ** 2
u = {"b": jnp.zeros(3), "c": jnp.zeros(()), "s": jnp.zeros(())}
X, y = np.zeros((5, 3)), np.zeros(5)
m = mlefit.models.Logistic()
print(_fingerprint.model_id(logistic, u, (X, y)))
print(_fingerprint.model_id(m.log_prob, m.init(X, y), (X, y)))
"""


def test_model_fingerprints_are_the_same_in_a_new_process():
    """A checkpoint is resumed in another process: the model's hash must not depend on it."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _ID_PROBE], env=env, capture_output=True,
                         text=True, timeout=240, check=True)
    u = {"b": jnp.zeros(3), "c": jnp.zeros(()), "s": jnp.zeros(())}
    Xs, ys = np.zeros((5, 3)), np.zeros(5)
    m = mlefit.models.Logistic()
    here = [_fingerprint.model_id(logistic, u, (Xs, ys)),
            _fingerprint.model_id(m.log_prob, m.init(Xs, ys), (Xs, ys))]
    assert out.stdout.split() == here and here[0] != here[1]


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
