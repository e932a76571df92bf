"""Checkpoints of long fits: save the state every k epochs, resume bitwise where it stopped.

A minibatch fit runs its epochs in chunks through one compiled program (the chunk's
first and last epoch are arguments, not constants), and epoch ``e`` draws its shuffle
from ``fold_in(key, e)``; so a fit stopped after any epoch and resumed from its
checkpoint takes exactly the steps of an uninterrupted fit (bitwise on CPU).

File format (version 1), never pickle:

- the line ``MLEFIT-CHECKPOINT``;
- one line of JSON, the header: format version, what the fit is (model name,
  parameter paths, shapes, dtypes and constraints, optimiser-state structure, data
  shapes, batch size, key type), fingerprints of its data and model
  (``mlefit._fingerprint``), the progress (epoch, epochs, steps), and the length and
  SHA-256 of the payload;
- the payload: the state's leaves written by ``equinox.tree_serialise_leaves``
  (parameters, optimiser state, the non-finite flag, the history so far, the key data).

A checkpoint is written to a temporary file in the same folder, flushed to disk, then
renamed over the old one (``os.replace`` is atomic): a crash while writing leaves the
previous checkpoint intact. The folder is checked for writing before anything compiles;
a write that fails later (disk full) is one ``RuntimeWarning``, and the fit goes on.

Resuming checks the shapes, then the fingerprints: a checkpoint of other data of the same
shapes, or of a model edited under the same name, is a ``ValueError`` before the fit runs,
unless ``resume_check`` says what not to check (``"model"``: new data on purpose;
``"shapes"``: new data or an edited model). A checkpoint from before fingerprints were
recorded resumes with its shapes checked and a ``RuntimeWarning`` saying so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._fingerprint import data_fingerprint, differences, fingerprint
from ._minibatch import (
    MinibatchState,
    minibatch_epochs,
    minibatch_finish,
    minibatch_history_dtype,
    minibatch_init,
)
from ._progress import progress_bar
from ._status import Status

__all__ = [
    "checkpoint_info", "run_minibatch", "save_checkpoint", "load_checkpoint", "resume_state",
    "saved_state", "CheckpointWriter", "RESUME_CHECKS",
]

FORMAT_VERSION = 1
_MAGIC = b"MLEFIT-CHECKPOINT\n"
# Header fields that must agree between a checkpoint and the fit resuming from it.
_IDENTITY_FIELDS = ("kind", "model", "params", "optimizer", "data", "batch_size", "key_type")
# What ``resume_check`` may ask for: everything; the model and shapes (new data on
# purpose); the shapes only (new data or an edited model on purpose).
RESUME_CHECKS = ("all", "model", "shapes")


# -- the header ----------------------------------------------------------------------
def _leaf_specs(tree) -> list:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"
        out.append([name, list(np.shape(leaf)), str(jnp.result_type(leaf))])
    return out


def _describe_transform(t) -> str:
    name = type(t).__name__
    if hasattr(t, "low") and hasattr(t, "high"):
        return f"{name}({t.low}, {t.high})"
    return name


def _key_type(key) -> str:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return f"key<{jax.random.key_impl(key)}>{list(key.shape)}"
    return f"raw uint32{list(key.shape)}"


def fit_identity(*, kind, model_name, u, transforms, opt_state, data_shapes, n_obs,
                 batch_size, key, fingerprint=None) -> dict:
    """The header fields that say which fit a checkpoint belongs to.

    ``fingerprint``: of its data and model (``mlefit._fingerprint.fingerprint``).
    """
    specs = _leaf_specs(u)
    for spec, t in zip(specs, transforms, strict=True):
        spec.append(_describe_transform(t))
    return {
        "kind": kind,
        "model": model_name,
        "params": specs,
        "optimizer": {
            "structure": str(jax.tree_util.tree_structure(opt_state)),
            "leaves": [s[1:] for s in _leaf_specs(opt_state)],
        },
        "data": {"n_obs": int(n_obs), "arrays": [list(s) for s in data_shapes]},
        "batch_size": int(batch_size),
        "key_type": _key_type(key),
        "fingerprint": fingerprint,
    }


def _data_shapes(data) -> list:
    return [[list(a.shape[1:]), str(a.dtype)] for a in data]


def _mismatches(saved: dict, expected: dict) -> list[str]:
    out = []
    for field in _IDENTITY_FIELDS:
        a, b = saved.get(field), expected[field]
        if a != b:
            out.append(f"{field}: checkpoint has {_short(a)}, this fit has {_short(b)}")
    return out


def _short(x) -> str:
    s = json.dumps(x)
    return s if len(s) <= 300 else s[:297] + "..."


# -- reading and writing ---------------------------------------------------------------
def _key_leaf(key):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _restore_key(data, like_key):
    if jnp.issubdtype(like_key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(like_key))
    return data


def save_checkpoint(path, header: dict, state: Any) -> None:
    """Writes ``header`` and the leaves of ``state`` to ``path`` atomically (temp file, rename).

    Only process 0 writes in a multi-process run (the state is replicated).
    """
    if jax.process_index() != 0:
        return
    path = pathlib.Path(path)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, state)
    payload = buf.getvalue()
    header = dict(header, format=FORMAT_VERSION, payload_bytes=len(payload),
                  payload_sha256=hashlib.sha256(payload).hexdigest())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            f.write(json.dumps(header).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CheckpointWriter:
    """Saves the checkpoints of one fit to ``path``; returns whether a write succeeded.

    A write that fails with an ``OSError`` (disk full, the folder removed) gives one
    ``RuntimeWarning`` naming the path and the error, and the fit goes on: its result is
    not lost, and each later checkpoint tries again (the file keeps the last good one).
    """

    def __init__(self, path):
        self.path = path
        self.failed = False

    def __call__(self, header: dict, state: Any) -> bool:
        try:
            save_checkpoint(self.path, header, state)
        except OSError as e:
            if not self.failed:
                warnings.warn(
                    f"checkpoint: cannot write {str(self.path)!r} ({type(e).__name__}: {e}); "
                    "the fit goes on and tries again at its next checkpoint; the file keeps "
                    "the last checkpoint written, if any.",
                    RuntimeWarning, stacklevel=2,
                )
            self.failed = True
            return False
        return True


def _read(path, what: str) -> tuple[dict, bytes]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint file at {str(path)!r}")
    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise ValueError(f"{what}: {str(path)!r} is not an mlefit checkpoint (no header line)")
    end = raw.find(b"\n", len(_MAGIC))
    try:
        header = json.loads(raw[len(_MAGIC):end])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {str(path)!r} is corrupted: unreadable header ({e})") from e
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{what}: {str(path)!r} has checkpoint format {header.get('format')!r}; this "
            f"version of mlefit reads format {FORMAT_VERSION}."
        )
    payload = raw[end + 1:]
    if len(payload) != header.get("payload_bytes") or (
        hashlib.sha256(payload).hexdigest() != header.get("payload_sha256")
    ):
        raise ValueError(
            f"{what}: {str(path)!r} is corrupted: its payload has {len(payload)} bytes and "
            f"a checksum that do not match the header ({header.get('payload_bytes')} bytes); "
            "it was truncated or modified."
        )
    return header, payload


def checkpoint_info(path) -> dict:
    """Returns the header of the checkpoint at ``path`` (a dict), after checking its checksum.

    Keys: ``model``, ``params`` (``[name, shape, dtype, constraint]`` per parameter in
    the unconstrained form the optimiser uses), ``optimizer``, ``data`` (``n_obs`` and
    the trailing shape and dtype of each array), ``fingerprint`` (of the data: checksums
    of strided rows and of all values; of the model: a hash of its jaxpr; the JAX
    version), ``batch_size``, ``epoch`` (epochs done), ``epochs`` (planned), ``steps``,
    ``format``. Raises ``ValueError`` for a corrupted file.

    Example:
        >>> info = mlefit.checkpoint_info("fit.ckpt")  # doctest: +SKIP
        >>> info["epoch"], info["epochs"]  # doctest: +SKIP
        (3, 6)
    """
    return _read(path, "path")[0]


def load_checkpoint(path, expected: dict, like: Any, check: str = "all") -> tuple[dict, Any]:
    """Reads ``path`` and returns ``(header, state)``; ``like(header)`` gives the state's form.

    Raises ``ValueError`` naming every field of ``expected`` that the checkpoint does not
    match (model, parameter shapes, optimiser, data shapes, batch size, key type), then,
    as ``check`` asks (:data:`RESUME_CHECKS`), when its data or model differ.
    """
    header, payload = _read(path, "resume_from")
    bad = _mismatches(header, expected)
    if bad:
        raise ValueError(
            f"resume_from: the checkpoint {str(path)!r} belongs to another fit: "
            + "; ".join(bad)
        )
    _check_fingerprint(path, header, expected, check)
    try:
        state = eqx.tree_deserialise_leaves(io.BytesIO(payload), like(header))
    except Exception as e:  # noqa: BLE001 - re-raised with the file's name
        raise ValueError(f"resume_from: cannot read the state in {str(path)!r}: {e}") from e
    return header, state


def _check_fingerprint(path, header: dict, expected: dict, check: str) -> None:
    if check == "shapes":
        return
    saved = header.get("fingerprint")
    if saved is None:
        warnings.warn(
            f"resume_from: the checkpoint {str(path)!r} has no fingerprint of its data and "
            "model (an older mlefit wrote it): resuming with only their shapes checked. "
            "Pass resume_check='shapes' to say that this is meant.",
            RuntimeWarning, stacklevel=2,
        )
        return
    data, model = differences(saved, expected.get("fingerprint") or {})
    if check == "model":
        data = None
    if data is None and model is None:
        return
    name, p = expected["model"], str(path)
    if model is not None:
        head = (f"resume_from: the checkpoint {p!r} was written for another version of the "
                f"model {name!r} (same name and shapes, but {model})")
        if data is not None:
            head += f", and for other data of the same shapes ({data})"
        raise ValueError(
            f"{head}. To continue from it with this model on purpose, pass "
            "resume_check='shapes' (only the shapes are then checked)."
        )
    raise ValueError(
        f"resume_from: the checkpoint {p!r} was written for other data of the same shapes "
        f"({data}). To continue from it on these data on purpose, pass "
        "resume_check='model' (then only the model and the shapes are checked)."
    )


# -- a minibatch fit in chunks of epochs -------------------------------------------------
@eqx.filter_jit
def _init_compiled(opt, u0, epochs, dtype):
    return minibatch_init(opt, u0, epochs, dtype)


@eqx.filter_jit
def _epochs_compiled(logp, transforms, opt, state, data, weights, key, batch_size, start, stop,
                     layout):
    return minibatch_epochs(logp, transforms, opt, state, data, weights, key, batch_size, start,
                            stop, layout)


@eqx.filter_jit
def _finish_compiled(logp, transforms, state, data, weights, tol, steps):
    return minibatch_finish(logp, transforms, state, data, weights, tol, steps)


def check_checkpoint_options(checkpoint, checkpoint_every, resume_from, minibatch: bool,
                             resume_check: str = "all"):
    """Validates the checkpoint options of ``fit`` (before anything compiles).

    ``checkpoint`` must be a file path in an existing folder this process can write into
    (checked by creating and removing a temporary file there).
    """
    if resume_check not in RESUME_CHECKS:
        raise ValueError(
            f"resume_check: expected one of {', '.join(map(repr, RESUME_CHECKS))}, got "
            f"{resume_check!r}"
        )
    if checkpoint is None and resume_from is None:
        return
    if not minibatch:
        raise ValueError(
            "checkpoint: only minibatch fits (batch_size=...) save and resume checkpoints; "
            "a full-batch fit runs in one compiled loop."
        )
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
            or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: must be a positive int, got {checkpoint_every!r}")
    if checkpoint is not None:
        _check_writable(pathlib.Path(checkpoint))


def _check_writable(path: pathlib.Path) -> None:
    if path.is_dir():
        raise ValueError(
            f"checkpoint: {str(path)!r} is a directory; give the path of a file, e.g. "
            f"{str(path / 'fit.ckpt')!r}."
        )
    folder = path.parent
    if not folder.exists():
        raise ValueError(
            f"checkpoint: the folder of {str(path)!r} does not exist; create it first."
        )
    if not folder.is_dir():
        raise ValueError(
            f"checkpoint: the folder of {str(path)!r}, {str(folder)!r}, is a file, not a "
            "directory."
        )
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.probe-")
    except OSError as e:
        raise ValueError(
            f"checkpoint: cannot write into the folder of {str(path)!r} "
            f"({type(e).__name__}: {e.strerror or e}); choose a writable folder."
        ) from None
    os.close(fd)
    os.unlink(probe)


def run_minibatch(problem, transforms, opts, u0, data, weights, tol, *, layout=None,
                  checkpoint=None, checkpoint_every: int = 1, resume_from=None, user_key=None,
                  progress=False, resume_check: str = "all"):
    """A minibatch fit in chunks of ``checkpoint_every`` epochs, saving after each chunk.

    Returns ``(u, value, grad, steps, status, history)`` as ``minibatch_loop`` does; every
    chunk calls the same compiled program. With ``resume_from`` the state, epoch and key
    come from that checkpoint (``ValueError`` if it belongs to another fit, or, as
    ``resume_check`` asks, to other data or another version of the model). Ctrl-C
    between chunks returns the last completed chunk's parameters with status
    ``INTERRUPTED`` (the checkpoint written after that chunk resumes it). With
    ``progress`` a tqdm bar advances by epochs (chunks of one epoch when no checkpoint
    sets them), showing the mean NLL of the last epoch.
    """

    opt, batch_size, epochs, key = opts.optimizer, opts.batch_size, opts.epochs, opts.key
    n = data[0].shape[0] if layout is None else layout.n_obs
    dtype = minibatch_history_dtype(u0, weights)
    state = _init_compiled(opt, u0, epochs, dtype)
    prints = None
    if checkpoint is not None or resume_from is not None:
        prints = fingerprint(problem.logp, u0, data, data_fingerprint(data, weights, layout))
    expected = fit_identity(
        kind="minibatch", model_name=problem.name, u=u0, transforms=transforms,
        opt_state=state.opt_state, data_shapes=_data_shapes(data), n_obs=n,
        batch_size=batch_size, key=key, fingerprint=prints,
    )
    start = 0
    if resume_from is not None:
        state, start, key, _ = resume_state(resume_from, expected, state, epochs, key,
                                            user_key, resume_check)
    n_batches = -(-n // batch_size)
    interrupted = False
    if layout is None:
        data, weights = jax.device_put((data, weights))  # once, not once per chunk
    bar = progress_bar(progress, unit="epoch")
    if bar is not None:
        bar.reset(total=epochs)
        bar.update(start)
    chunk = checkpoint_every if checkpoint is not None else (1 if bar is not None else epochs)
    save = CheckpointWriter(checkpoint)
    try:
        while start < epochs:
            stop = min(start + chunk, epochs)
            state = _epochs_compiled(
                problem.logp, transforms, opt, state, data, weights, key, batch_size,
                jnp.asarray(start, jnp.int32), jnp.asarray(stop, jnp.int32), layout,
            )
            jax.block_until_ready(state)  # Ctrl-C lands between chunks, not inside one
            if bar is not None:
                bar.update(stop - start)
                bar.set_postfix(nll=f"{float(state.history[stop - 1]):.8g}")
            start = stop
            if checkpoint is not None:
                progress = {"epoch": start, "epochs": epochs, "steps": start * n_batches}
                save(dict(expected, **progress), saved_state(state, key, start))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    out = _finish_compiled(problem.logp, transforms, state, data, weights, tol,
                           jnp.asarray(start * n_batches, jnp.int32))
    if interrupted:  # the last completed chunk's parameters; resume from the checkpoint
        out = (*out[:4], jnp.asarray(Status.INTERRUPTED, jnp.int32), out[5])
    return out


def saved_state(state: MinibatchState, key, epoch: int) -> dict:
    """What a checkpoint stores of a minibatch fit after ``epoch`` epochs."""
    return {
        "u": state.u, "opt_state": state.opt_state, "bad": state.bad,
        "history": state.history[:epoch], "key": _key_leaf(key),
    }


def resume_state(path, expected, state: MinibatchState, epochs: int, key, user_key,
                 check: str = "all"):
    """``(state, epoch, key, header)`` restored from the checkpoint at ``path``; ``check``:
    what besides the shapes must agree (:data:`RESUME_CHECKS`)."""
    def like(header):
        e = int(header["epoch"])
        return {
            "u": state.u, "opt_state": state.opt_state, "bad": state.bad,
            "history": jax.ShapeDtypeStruct((e,), state.history.dtype),
            "key": jax.ShapeDtypeStruct(_key_leaf(key).shape, _key_leaf(key).dtype),
        }

    header, saved = load_checkpoint(path, expected, like, check)
    done = int(header["epoch"])
    if done > epochs:
        raise ValueError(
            f"epochs: the checkpoint {str(path)!r} has already run {done} epochs; ask for "
            f"epochs >= {done} (got {epochs})."
        )
    saved_key = _restore_key(saved["key"], key)
    if user_key is not None and not np.array_equal(
        np.asarray(_key_leaf(user_key)), np.asarray(saved["key"])
    ):
        raise ValueError(
            f"key: differs from the key of the checkpoint {str(path)!r}; resuming continues "
            "the checkpoint's shuffles, so pass key=None (or the same key)."
        )
    history = state.history.at[:done].set(saved["history"])
    restored = MinibatchState(saved["u"], saved["opt_state"], saved["bad"], history)
    return restored, done, saved_key, header
