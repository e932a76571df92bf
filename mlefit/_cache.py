"""Opt-in persistent compilation cache: a new process skips recompiling a seen fit.

Compiling a fit takes most of a first fit's time on small data (0.5-1.5 s on 2 CPU
cores). JAX can keep compiled executables on disk (``jax_compilation_cache_dir``); by
default it stores only programs that took more than 1 s to compile, so most fits are
never cached. :func:`enable_compilation_cache` points JAX at a private directory and
lowers the thresholds so every fit is kept.

mlefit never writes to the user's disk unasked: the cache is on only after a call to
:func:`enable_compilation_cache`, or when the environment variable ``MLEFIT_CACHE_DIR``
names a directory when mlefit is imported (the command-line tool turns it on itself).
"""

from __future__ import annotations

import os

import jax

__all__ = ["enable_compilation_cache", "default_cache_dir", "executable_dir", "ENV_VAR"]

ENV_VAR = "MLEFIT_CACHE_DIR"
_ENABLED: str | None = None  # the directory enable_compilation_cache set, if any


def default_cache_dir() -> str:
    """``$MLEFIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlefit/jax`` (``~/.cache/mlefit/jax``)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlefit", "jax")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turns on JAX's persistent compilation cache for every fit; returns its directory.

    Compiled fits are written to ``path`` (default :func:`default_cache_dir`), and a
    later process fitting the same model to data of the same shapes and dtypes loads
    the executable instead of compiling it. All programs are cached, however quick to
    compile (``jax_persistent_cache_min_compile_time_secs = 0``,
    ``jax_persistent_cache_min_entry_size_bytes = -1``). The fits of ``fit`` and
    ``fit_many`` are also stored whole in ``path/mlefit-executables``, keyed without
    tracing them (see ``mlefit._compiled``), so a fresh process skips tracing too.
    The directory is created private to the user (mode 0700): what is read from it is
    trusted and executed, so never share it.

    Args:
        path: the cache directory; ``None`` for ``$MLEFIT_CACHE_DIR`` or
            ``~/.cache/mlefit/jax``.

    Returns:
        The absolute path of the cache directory.

    Example:
        >>> import mlefit
        >>> d = mlefit.enable_compilation_cache("/tmp/mlefit-doc-cache")
        >>> d
        '/tmp/mlefit-doc-cache'
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a directory path (str), got {type(path).__name__}")
    target = os.path.abspath(os.path.expanduser(os.fspath(path) if path else default_cache_dir()))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"path: {target!r} exists and is not a directory")
    os.makedirs(target, mode=0o700, exist_ok=True)
    global _ENABLED
    _ENABLED = target
    changed = jax.config.jax_compilation_cache_dir != target
    jax.config.update("jax_compilation_cache_dir", target)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if changed:
        _reset_jax_cache_state()
    return target


def executable_dir() -> str | None:
    """Where whole compiled fits are stored: ``<cache>/mlefit-executables`` while the cache
    that :func:`enable_compilation_cache` turned on is JAX's cache; else ``None``."""
    if _ENABLED is None or jax.config.jax_compilation_cache_dir != _ENABLED:
        return None
    return os.path.join(_ENABLED, "mlefit-executables")


def _reset_jax_cache_state() -> None:
    # JAX decides once per process, at its first compilation, whether a persistent
    # cache is in use; a cache enabled after that is ignored unless this is reset.
    try:
        from jax._src import compilation_cache
    except ImportError:  # pragma: no cover - private module moved; the dir is still set
        return
    if compilation_cache.is_initialized() or getattr(compilation_cache, "_cache_checked", False):
        compilation_cache.reset_cache()


def _enable_from_env() -> None:
    if os.environ.get(ENV_VAR):
        enable_compilation_cache()


_enable_from_env()
