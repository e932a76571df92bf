"""Compiled fits: kept per process and, with the cache on, stored on disk as executables.

JAX's persistent compilation cache is keyed by the lowered program, so a fresh process
must still trace and lower a fit (0.2-0.4 s for an L-BFGS loop) before it can look the
executable up. With mlefit's cache on (the default; see ``mlefit._cache``), the
executable of a fit is also stored under a key that needs no tracing of the fit:

- the model: the jaxpr (with its constants) of its per-observation log-density and its
  gradient, at the shapes and dtypes of one observation. Every derivative rule used for
  the gradient is in that jaxpr; a custom rule used only for second derivatives (Newton
  steps) is identified by its name;
- the fit's static parts: transforms, optimiser (only mlefit's default ones are
  storable), step budget, options;
- the pytree structure, shapes, dtypes and placement of the fit's inputs;
- the environment: a hash of mlefit's source, the versions of JAX, jaxlib, optax and
  equinox, the backend and device kind, JAX's numerics flags, ``XLA_*``/``MLEFIT_*``
  environment variables.

A process fitting a model and shape seen before loads the executable (about 0.1 s)
instead of tracing, lowering and looking up. Anything that cannot be fingerprinted
(a custom optimiser, a model whose jaxpr cannot be built) or whose pytree structure does
not survive pickling (parameters held in an equinox Module) is compiled as usual.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ._cache import executable_dir, max_bytes, trim
from ._objective import Reduced

__all__ = ["compiled_call", "model_fingerprint", "clear_memory"]

_FORMAT = 1
_MEMO: collections.OrderedDict = collections.OrderedDict()
_MEMO_SIZE = 256


def clear_memory() -> None:
    """Forgets the executables kept by this process (tests; frees their memory)."""
    _MEMO.clear()


def compiled_call(fn: Callable, static: tuple, dynamic: tuple, fingerprint: Callable,
                  opt_level: int | None = None):
    """``fn(*static, *dynamic)``, compiled once per static part and input layout.

    ``static`` must be hashable (the model, transforms, options); ``dynamic`` is a tuple
    of array pytrees. ``fingerprint()`` describes ``static`` as a string for the disk key,
    or returns ``None`` when it cannot (then nothing is stored). ``opt_level``: LLVM's
    optimisation level on the CPU (:func:`compiler_options`; ``None``: XLA's default).
    """
    leaves, tree = jax.tree_util.tree_flatten(dynamic)
    layout = tuple(_leaf_layout(x) for x in leaves)
    key = (fn, static, tree, layout, _switches(), opt_level)
    exe = _MEMO.get(key)
    if exe is None:
        exe = _load_or_compile(fn, static, dynamic, tree, layout, fingerprint, opt_level)
        _MEMO[key] = exe
        if len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    else:
        _MEMO.move_to_end(key)
    return exe(*dynamic)


def _leaf_layout(x):
    """Shape, dtype, weak type and placement of an input; placement ``None`` for host
    arrays and arrays on the default device (one executable serves both)."""
    if isinstance(x, np.ndarray | np.generic):
        return (x.shape, x.dtype.str, False, None)
    x = jax.numpy.asarray(x) if not isinstance(x, jax.Array) else x
    sharding = x.sharding
    devices = sharding.device_set
    default = len(devices) == 1 and next(iter(devices)) == jax.devices()[0]
    return (x.shape, x.dtype.str, bool(getattr(x, "weak_type", False)),
            None if default else sharding)


# XLA:CPU's newer fusion emitters compile a fit 1.5-2.5x slower than the classic ones,
# for the same speed of the compiled fit (benchmarks/RESULTS.md, "Compile time").
# MLEFIT_CPU_FUSION_EMITTERS=1 keeps XLA's default.
_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def compiler_options(opt_level: int | None = None) -> dict:
    """Per-program XLA options of a compiled fit (none off the CPU).

    ``opt_level``: LLVM's optimisation level (``None``: XLA's default). Level 0 for a
    small fit (milliseconds to run): XLA:CPU spends most of its compile time in LLVM's
    optimisations, and at level 0 the Spector logit's fit program compiled in half the
    CPU time (0.68 s against 1.35 s, loaded 2-core machine) and ran as fast within the
    noise. Level 1 for subsampled Newton's program (its subsample's Newton loop holds
    many small kernels): 0.62 s against 0.79 s for a 1e6 x 33 logistic fit, medians of
    5, the same run time (0.25 s); L-BFGS programs gain nothing from it.
    """
    if jax.default_backend() != "cpu":
        return {}
    options = {} if os.environ.get("MLEFIT_CPU_FUSION_EMITTERS") == "1" else dict(_CPU_OPTIONS)
    if opt_level is not None:
        options["xla_backend_optimization_level"] = int(opt_level)
    return options


def _compile(fn, static, dynamic, opt_level: int | None = None):
    lowered = jax.jit(functools.partial(fn, *static)).lower(*dynamic)
    options = compiler_options(opt_level)
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except Exception:  # noqa: BLE001 - an XLA without the option: its defaults
            pass
    return lowered.compile()


def _load_or_compile(fn, static, dynamic, tree, layout, fingerprint, opt_level=None):
    directory = executable_dir()
    path = None
    if directory is not None and all(lay[-1] is None for lay in layout):
        desc = fingerprint()
        if desc is not None:
            name = f"{fn.__module__}.{fn.__qualname__}"
            digest = _digest(environment(), name, desc, str(tree), repr(layout),
                             repr(opt_level))
            path = Path(directory) / f"{digest}.exe"
            exe = _load(path)
            if exe is not None:
                return exe
    if path is None:
        return _compile(fn, static, dynamic, opt_level)
    with _fresh_compilation() as fresh:
        exe = _compile(fn, static, dynamic, opt_level)
    if fresh:
        _store(path, exe)
    return exe


@contextlib.contextmanager
def _fresh_compilation():
    """JAX's persistent cache off for one compilation; yields whether it could be.

    An executable that JAX's cache deserialized, serialized again into mlefit's store,
    loads without some of its kernels ("NOT_FOUND: Function ... not found" when it runs;
    seen on XLA:CPU with jax 0.10.2 at every optimisation level). A program that goes into
    the store is therefore compiled afresh, once per key; the store then serves every
    later process. JAX decides once per process whether its cache is used
    (``compilation_cache._cache_used``, private): where that switch is not there, the
    program is compiled as usual and not stored.
    """
    try:
        from jax._src import compilation_cache as cc

        saved = (cc._cache_checked, cc._cache_used)
    except (ImportError, AttributeError):
        yield False
        return
    cc._cache_checked, cc._cache_used = True, False
    try:
        yield True
    finally:
        cc._cache_checked, cc._cache_used = saved


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


@functools.cache
def _register_linalg_kernels() -> None:
    """JAX registers its LAPACK kernels when it first lowers a linear-algebra operation. A
    stored fit that calls one (the eigendecomposition of ``fit(optimizer="newton")``, the
    Cholesky factor of a Newton fit with more than 8 parameters), loaded in a fresh process
    that has lowered none, would call an unregistered kernel and crash: lower one first."""
    a = jax.ShapeDtypeStruct((2, 2), np.float32)
    jax.jit(lambda m: (jax.numpy.linalg.eigh(m), jax.numpy.linalg.cholesky(m))).lower(a)


def _load(path: Path):
    from jax.experimental import serialize_executable

    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        version, payload, in_tree, out_tree = pickle.loads(blob)
        if version != _FORMAT:
            return None
        _register_linalg_kernels()
        exe = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be trimmed
        return exe
    except Exception:  # noqa: BLE001 - a damaged or foreign entry is recompiled and replaced
        return None


def _store(path: Path, exe) -> None:
    from jax.experimental import serialize_executable

    try:
        payload, in_tree, out_tree = serialize_executable.serialize(exe)
        trees = pickle.dumps((in_tree, out_tree))
        if pickle.loads(trees) != (in_tree, out_tree):
            return  # e.g. equinox Modules: their structure does not survive pickling
        blob = pickle.dumps((_FORMAT, payload, in_tree, out_tree))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)  # atomic: a concurrent reader sees all of it or nothing
        trim(path.parent.parent, max_bytes())  # the whole cache folder under its limit
    except Exception:  # noqa: BLE001 - storing is an optimisation; the fit goes on
        return


_CONFIG = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_dtype_promotion",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
)


def _switches() -> tuple:
    """JAX flags and ``XLA_*``/``MLEFIT_*`` variables a traced fit can depend on."""
    config = tuple(str(getattr(jax.config, name, None)) for name in _CONFIG)
    env = tuple(sorted(
        (k, v)
        for k, v in os.environ.items()
        if (k.startswith("XLA_") or k.startswith("MLEFIT_")) and k != "MLEFIT_CACHE_DIR"
    ))
    return config, env


@functools.cache
def _source_hash() -> str:
    h = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def environment() -> str:
    """What besides the model and inputs decides a compiled program (see the module doc)."""
    import equinox
    import jaxlib
    import optax

    device = jax.devices()[0]
    return repr((
        _FORMAT, _source_hash(), jax.__version__, jaxlib.__version__, optax.__version__,
        equinox.__version__, device.platform, device.device_kind, len(jax.devices()),
        _switches(),
    ))


def model_fingerprint(logp, params, obs) -> str | None:
    """The model as a string: the jaxpr and constants of ``log p`` and its gradient for
    ONE observation (``params``/``obs``: shapes and dtypes).

    ``None`` when they cannot be built: such a model is not stored.
    """
    extra = ""
    if isinstance(logp, Reduced):
        extra = repr((logp.spec.constants, logp.spec.pairs))
        logp = logp.logp
    try:
        closed = jax.make_jaxpr(jax.value_and_grad(logp))(params, *obs)
        h = hashlib.sha256(str(closed).encode())
        for c in closed.consts:
            a = np.asarray(c)
            h.update(repr((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
    except Exception:  # noqa: BLE001 - not describable: compiled as usual, not stored
        return None
    return f"{h.hexdigest()}:{extra}"
