"""The persistent compilation cache, on by default: a new process skips recompiling a seen fit.

Compiling a fit takes most of a first fit's time on small data (0.5-1.5 s on 2 CPU
cores). JAX can keep compiled executables on disk (``jax_compilation_cache_dir``); by
default it stores only programs that took more than 1 s to compile, so most fits would
never be cached. When mlefit is imported it points JAX at a private folder and lowers the
thresholds so every fit is kept, and it stores whole fits there too (``mlefit._compiled``).

Where (read once, when mlefit is imported):

- ``MLEFIT_CACHE_DIR`` unset or empty: ``$XDG_CACHE_HOME/mlefit/jax`` (``~/.cache/mlefit/jax``);
  if JAX already has a cache folder of its own (``JAX_COMPILATION_CACHE_DIR``, or
  ``jax.config`` set before importing mlefit), mlefit leaves JAX's settings alone;
- ``MLEFIT_CACHE_DIR=DIR``: in ``DIR``;
- ``MLEFIT_CACHE_DIR=0`` (or ``off``, ``false``, ``no``, ``none``, any case): no cache. A folder
  with such a name is spelled ``./0``.

Size: the folder mlefit turned on is kept under ``MLEFIT_CACHE_MAX_MB`` megabytes (default
2048, read at each check). After mlefit stores a compiled fit it adds up the entries
(JAX's ``*-cache`` files, mlefit's ``mlefit-executables/*.exe``); above the limit it
removes the least recently used (by modification time: mlefit's entries are touched when
loaded, JAX's when written) until the folder is at 80% of the limit (:func:`trim`).

:func:`disable_compilation_cache` turns it off in a running process and
:func:`enable_compilation_cache` on again (or elsewhere). A folder that cannot be used (a
file, a path below a file, a folder that cannot be written or created) never stops mlefit:
it gives one ``RuntimeWarning`` naming the folder and the reason, and fits run uncached.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import jax

__all__ = [
    "enable_compilation_cache", "disable_compilation_cache", "default_cache_dir",
    "executable_dir", "ENV_VAR", "OFF_VALUES", "MAX_MB_VAR", "DEFAULT_MAX_MB", "max_bytes",
    "trim",
]

ENV_VAR = "MLEFIT_CACHE_DIR"
MAX_MB_VAR = "MLEFIT_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
_ENTRY_SUFFIXES = ("-cache", ".exe")  # JAX's entries, mlefit's whole fits'
_TRIM_TO = 0.8  # a trim leaves the folder at this fraction of the limit
# Values of MLEFIT_CACHE_DIR that turn the cache off (compared lower-cased, stripped).
OFF_VALUES = frozenset({"0", "off", "false", "no", "none"})
_ENABLED: str | None = None  # the directory mlefit set as JAX's cache, if any
_THRESHOLDS = ("jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")
_SAVED: dict = {}  # JAX's thresholds before mlefit lowered them (restored on disable)
_WARNED: dict = {}  # the warnings registry of the import-time set-up (each warning once)


def _env_value() -> str:
    return os.environ.get(ENV_VAR, "").strip()


def default_cache_dir() -> str:
    """``$MLEFIT_CACHE_DIR`` when it names a folder, else ``$XDG_CACHE_HOME/mlefit/jax``
    (``~/.cache/mlefit/jax`` without ``XDG_CACHE_HOME``)."""
    env = _env_value()
    if env and env.lower() not in OFF_VALUES:
        return os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlefit", "jax")


def _prepare(target: str) -> str | None:
    """Creates ``target`` if missing; returns why it cannot be the cache folder, or ``None``."""
    if os.path.exists(target):
        if not os.path.isdir(target):
            return "is a file, not a directory"
        if not os.access(target, os.W_OK | os.X_OK):
            return "is not writable"
        return None
    parent = os.path.dirname(target)
    while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        return f"is below a file ({parent!r} is not a directory)"
    if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent!r} is not writable"
    try:
        os.makedirs(target, mode=0o700, exist_ok=True)
    except OSError as e:
        return f"cannot be created ({e.strerror or e})"
    return None


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turns on JAX's persistent compilation cache for every fit; returns its directory.

    mlefit does this when it is imported (see ``MLEFIT_CACHE_DIR`` in the README); call it
    to move the cache, or to turn it on again after :func:`disable_compilation_cache`.
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

    Raises:
        ValueError: ``path`` is a file, below a file, or cannot be written or created.

    Example:
        >>> import mlefit
        >>> d = mlefit.enable_compilation_cache("/tmp/mlefit-doc-cache")
        >>> d
        '/tmp/mlefit-doc-cache'
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a directory path (str), got {type(path).__name__}")
    target = os.path.abspath(os.path.expanduser(os.fspath(path) if path else default_cache_dir()))
    reason = _prepare(target)
    if reason is not None:
        raise ValueError(f"path: {target!r} {reason}; give a writable directory")
    _switch_on(target)
    return target


def _switch_on(target: str) -> None:
    global _ENABLED
    if _ENABLED is None:
        _SAVED.update({name: getattr(jax.config, name) for name in _THRESHOLDS})
    _ENABLED = target
    changed = jax.config.jax_compilation_cache_dir != target
    jax.config.update("jax_compilation_cache_dir", target)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if changed:
        _reset_jax_cache_state()


def disable_compilation_cache() -> None:
    """Turns off the persistent compilation cache that mlefit turned on; returns ``None``.

    Later compilations in this process are neither read from nor written to disk (what
    is on disk stays), JAX's caching thresholds are restored, and whole fits are no longer
    stored. A cache folder you gave JAX yourself (not through mlefit) is left alone. To
    start a process without the cache, set ``MLEFIT_CACHE_DIR=0`` instead.

    Example:
        >>> import jax, mlefit
        >>> mlefit.disable_compilation_cache()
        >>> mlefit._cache.executable_dir() is None
        True
    """
    global _ENABLED
    if _ENABLED is None:
        return
    ours = jax.config.jax_compilation_cache_dir == _ENABLED
    _ENABLED = None
    for name, value in _SAVED.items():
        jax.config.update(name, value)
    _SAVED.clear()
    if ours:
        jax.config.update("jax_compilation_cache_dir", None)
        _reset_jax_cache_state()


def executable_dir() -> str | None:
    """Where whole compiled fits are stored: ``<cache>/mlefit-executables`` while the cache
    that mlefit turned on is JAX's cache; else ``None``."""
    if _ENABLED is None or jax.config.jax_compilation_cache_dir != _ENABLED:
        return None
    return os.path.join(_ENABLED, "mlefit-executables")


def max_bytes() -> int:
    """The cache folder's size limit in bytes: ``$MLEFIT_CACHE_MAX_MB`` megabytes (a
    positive number), else ``DEFAULT_MAX_MB``; an unusable value warns once and the default
    applies."""
    raw = os.environ.get(MAX_MB_VAR, "").strip()
    if raw:
        try:
            mb = float(raw)
            if not mb > 0 or mb == float("inf"):
                raise ValueError
        except ValueError:
            warnings.warn_explicit(
                f"{MAX_MB_VAR}={raw!r} is not a positive number of megabytes; the cache is "
                f"kept under the default {DEFAULT_MAX_MB} MB.",
                RuntimeWarning, __file__, 0, module=__name__, registry=_WARNED)
        else:
            return int(mb * 1024 * 1024)
    return DEFAULT_MAX_MB * 1024 * 1024


def trim(directory: str | os.PathLike, limit: int) -> int:
    """Removes the least recently modified cache entries under ``directory`` (JAX's
    ``*-cache`` files and their ``*-atime`` companions at the top, ``*.exe`` files in
    ``mlefit-executables``) while they add up to more than ``limit`` bytes, down to
    ``0.8 limit``; returns the bytes removed. Other files are left alone, and an entry
    another process removed first is skipped.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for i, name in enumerate(["a-cache", "b-cache", "notes.txt"]):
        ...     _ = (d / name).write_bytes(b"x" * 100)
        ...     os.utime(d / name, (i, i))
        >>> trim(d, 150), sorted(p.name for p in d.iterdir())
        (100, ['b-cache', 'notes.txt'])
    """
    entries = []
    for folder in (os.fspath(directory), os.path.join(os.fspath(directory), "mlefit-executables")):
        try:
            scan = list(os.scandir(folder))
        except OSError:
            continue
        for e in scan:
            if not e.name.endswith(_ENTRY_SUFFIXES):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, e.path))
    total = sum(size for _, size, _ in entries)
    if total <= limit:
        return 0
    removed = 0
    for _, size, path in sorted(entries):
        if total - removed <= _TRIM_TO * limit:
            break
        try:
            os.remove(path)
        except OSError:
            continue
        removed += size
        if path.endswith("-cache"):  # JAX's LRU bookkeeping for the entry, if any
            with contextlib.suppress(OSError):
                os.remove(path[: -len("-cache")] + "-atime")
    return removed


def _reset_jax_cache_state() -> None:
    # JAX decides once per process, at its first compilation, whether a persistent
    # cache is in use; a cache enabled after that is ignored unless this is reset.
    try:
        from jax._src import compilation_cache
    except ImportError:  # pragma: no cover - private module moved; the dir is still set
        return
    if compilation_cache.is_initialized() or getattr(compilation_cache, "_cache_checked", False):
        compilation_cache.reset_cache()


def _enable_default() -> None:
    """What importing mlefit does: the cache where ``MLEFIT_CACHE_DIR`` says (see the module
    doc); an unusable folder is one warning, never an error."""
    env = _env_value()
    if env.lower() in OFF_VALUES:
        return
    if not env and jax.config.jax_compilation_cache_dir:
        return  # the user's own JAX cache: not ours to change
    target = os.path.abspath(default_cache_dir())
    reason = _prepare(target)
    if reason is not None:
        where = f"{ENV_VAR}={env!r}: the cache folder" if env else (
            f"the default cache folder (no {ENV_VAR} set)")
        # Issued from this module (line 0: no source line is echoed), not from the
        # importer's frame: one line on stderr, even for the command line, which cannot
        # format it (it imports mlefit before it runs); ``module="mlefit"`` filters it.
        warnings.warn_explicit(
            f"{where} {target!r} {reason}; mlefit runs without the persistent compilation "
            f"cache. Set {ENV_VAR} to a writable folder, or {ENV_VAR}=0 to turn it off.",
            RuntimeWarning, __file__, 0, module=__name__, registry=_WARNED,
        )
        return
    _switch_on(target)


_enable_default()
