"""The persistent compilation cache (on by default): a fresh process reuses a compiled fit.

The suite runs with it off (tests/conftest.py); these tests give subprocesses a temporary
``MLEFIT_CACHE_DIR`` or ``XDG_CACHE_HOME``, or rerun the import-time set-up in this process
and restore JAX's configuration after.
"""

import json
import os
import re
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as st
import numpy as np
import pytest

import mlefit

# The start of a fresh process: float64, and a count of JAX's persistent-cache hits and misses.
_COUNT_CACHE_EVENTS = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
events = {"hits": 0, "misses": 0}
def on_event(name, **kw):
    if name == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
    elif name == "/jax/compilation_cache/cache_misses":
        events["misses"] += 1
jax.monitoring.register_event_listener(on_event)
"""

@pytest.fixture
def fresh_cache_state(monkeypatch):
    """Lets a test rerun mlefit's import-time set-up in this process; restores JAX after."""
    from mlefit import _cache

    names = ("jax_compilation_cache_dir", *_cache._THRESHOLDS)
    before = {k: getattr(jax.config, k) for k in names}
    monkeypatch.setattr(_cache, "_WARNED", {})
    yield _cache
    _cache.disable_compilation_cache()
    for k, v in before.items():
        jax.config.update(k, v)
    _cache._reset_jax_cache_state()


@pytest.mark.parametrize("value", ["0", "off", " OFF ", "False", "no", "none"])
def test_off_values_turn_the_cache_off(tmp_path, monkeypatch, fresh_cache_state, value):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("MLEFIT_CACHE_DIR", value)
    fresh_cache_state._enable_default()
    assert jax.config.jax_compilation_cache_dir is None
    assert fresh_cache_state.executable_dir() is None and not os.listdir(tmp_path)
    monkeypatch.setenv("MLEFIT_CACHE_DIR", "")  # empty counts as unset: the default folder
    fresh_cache_state._enable_default()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mlefit" / "jax")


def test_a_jax_cache_set_by_the_user_is_left_alone(tmp_path, monkeypatch, fresh_cache_state):
    monkeypatch.delenv("MLEFIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    fresh_cache_state._enable_default()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0  # JAX's default
    assert fresh_cache_state.executable_dir() is None and not (tmp_path / "xdg").exists()
    # MLEFIT_CACHE_DIR given explicitly wins over it
    monkeypatch.setenv("MLEFIT_CACHE_DIR", str(tmp_path / "ours"))
    fresh_cache_state._enable_default()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "ours")


def test_disable_compilation_cache(tmp_path, fresh_cache_state):
    d = mlefit.enable_compilation_cache(str(tmp_path / "c"))
    assert jax.config.jax_compilation_cache_dir == d
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert fresh_cache_state.executable_dir() == os.path.join(d, "mlefit-executables")
    mlefit.disable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir is None
    assert fresh_cache_state.executable_dir() is None
    # JAX's own thresholds are back (1 s and 0 bytes: its defaults in this process)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0
    mlefit.disable_compilation_cache()  # a second call does nothing
    assert jax.config.jax_compilation_cache_dir is None


def _unwritable_dir(tmp_path):
    """A cache folder this process cannot create: below a 0o500 folder, or, for root (whom
    permissions do not stop), in /sys, where mkdir fails even for root."""
    if os.geteuid() == 0:
        return "/sys/mlefit-test-cache", r"cannot be created \(Operation not permitted\)"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return str(locked / "cache"), r"cannot be created: '.*locked' is not writable"


def _bad_dirs(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("not a folder")
    return [
        (str(f), r"is a file, not a directory"),
        (str(f / "below"), rf"is below a file \('{f}' is not a directory\)"),
        _unwritable_dir(tmp_path),
    ]


def test_enable_compilation_cache_rejects_unusable_folders(tmp_path, fresh_cache_state):
    for path, reason in _bad_dirs(tmp_path):
        with pytest.raises(ValueError, match=f"path: '{path}' {reason}; give a writable"):
            mlefit.enable_compilation_cache(path)
    with pytest.raises(TypeError, match="path: expected a directory path"):
        mlefit.enable_compilation_cache(3)
    assert jax.config.jax_compilation_cache_dir is None  # still off


def test_unusable_env_folder_warns_at_import(tmp_path, monkeypatch, fresh_cache_state):
    for path, reason in _bad_dirs(tmp_path):
        monkeypatch.setenv("MLEFIT_CACHE_DIR", path)
        with pytest.warns(RuntimeWarning, match=f"MLEFIT_CACHE_DIR='{path}': the cache folder "
                          f"'{path}' {reason}; mlefit runs without"):
            fresh_cache_state._enable_default()
        assert jax.config.jax_compilation_cache_dir is None


# A fresh process: imports mlefit (MLEFIT_CACHE_DIR unusable) and runs a tiny fit.
_IMPORT_PROBE = r"""
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import mlefit
res = mlefit.fit(mlefit.models.Exponential(), np.array([1.0, 2.0, 3.0, 6.0]))
print(repr(jax.config.jax_compilation_cache_dir), float(res.params["rate"]))
"""


def test_unusable_cache_folder_does_not_stop_import_or_fits(tmp_path):
    """Issue 17: a file, a path below a file, a folder that cannot be created: one warning
    line naming MLEFIT_CACHE_DIR, the folder and the reason; the fit runs, uncached."""
    procs = []
    for path, reason in _bad_dirs(tmp_path):
        env = dict(os.environ, MLEFIT_CACHE_DIR=path, JAX_PLATFORMS="cpu")
        procs.append((path, reason, subprocess.Popen(
            [sys.executable, "-c", _IMPORT_PROBE], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)))
    for path, reason, p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert re.search(f"RuntimeWarning: MLEFIT_CACHE_DIR='{path}': the cache folder "
                         f"'{path}' {reason}; mlefit runs without the persistent", err), err
        cache_dir, rate = out.split()
        assert cache_dir == "None"
        assert float(rate) == pytest.approx(4 / 12, rel=1e-9)  # 1 / mean of the data


# A fresh process: fits of five kinds (a plain function; a model closing over an array C
# given on the command line; fit_many of a ready-made model; a Newton fit, whose
# eigendecomposition is a LAPACK kernel; a Newton fit_many with > 8 parameters, whose
# Cholesky factor is one; a nonlinear model refitted with a new closure of the same code).
# Reports their results, JAX's persistent-cache hits and misses, and which fits were traced
# (a fit loaded from mlefit's executable store is not traced at all).
_STORE_PROBE = _COUNT_CACHE_EVENTS + r"""
traced = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, d, **kw: traced.append(kw.get("fun_name"))
    if name == "/jax/core/compile/jaxpr_trace_duration" else None)
import numpy as np, jax.numpy as jnp, jax.scipy.stats as st
import mlefit
x = np.linspace(-1.0, 3.0, 50)
C = np.array([float(sys.argv[1])])
init = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
a = mlefit.fit(lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"]), x, init)
b = mlefit.fit(lambda p, x: st.norm.logpdf(x - C[0], p["mu"], p["sigma"]), x, init)
rng = np.random.default_rng(0)
g = mlefit.fit_many(mlefit.models.Gamma(), rng.gamma(2.0, 1.5, (8, 40)))
e = mlefit.fit(mlefit.models.Gamma(), rng.gamma(2.0, 1.5, 301), optimizer="newton")
X, y = rng.normal(size=(4, 60, 2)), rng.integers(0, 4, (4, 60))
s = mlefit.fit_many(mlefit.models.Softmax(4), (X, y))  # 9 parameters: LAPACK Cholesky
t = np.linspace(1.0, 10.0, 40)
u = 3.0 * (1 - np.exp(-0.4 * t)) + 0.01 * np.sin(7 * t)
r = []
for start in (1.0, 2.0):  # a new closure per fit: the second is loaded from the store
    model = lambda p, t, u: st.norm.logpdf(u, p["a"] * (1 - jnp.exp(-p["b"] * t)), 0.1)
    res = mlefit.fit(model, (t, u), {"a": start, "b": 0.5}, optimizer="newton")
    r.append([str(res.status), float(res.params["a"])])
print(json.dumps({**events,
    "dir": jax.config.jax_compilation_cache_dir,
    "a": float(a.params["mu"]), "b": float(b.params["mu"]), "status": str(b.status),
    "g": np.asarray(g.params["shape"]).tolist(), "e": float(e.params["shape"]),
    "s": np.asarray(s.params["intercept"]).tolist(), "r": r,
    "fits_traced": sum(t in ("_program", "_fit_many_static_first") for t in traced),
}))
"""


def _store_run(home, c):
    """The probe in a fresh process with the cache at its default place (no
    MLEFIT_CACHE_DIR): ``$XDG_CACHE_HOME/mlefit/jax`` with ``XDG_CACHE_HOME=home``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLEFIT_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(home), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _STORE_PROBE, str(c)], env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Warning" not in out.stderr, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fresh_processes_reuse_stored_fits_and_never_a_changed_model(tmp_path):
    """One sequence of fresh processes over one cache folder, the default one (each process
    costs an import of JAX, so the cases share them).

    - The LAPACK kernels (Newton's eigendecomposition, the Cholesky factor of a Newton
      fit_many) are registered only when a process lowers one: loading such a stored fit
      used to crash (segmentation fault).
    - An executable JAX's persistent cache hands back does not survive being serialized
      again into mlefit's store (its kernels go missing: 'NOT_FOUND: Function ... not
      found' when the loaded fit runs): mlefit compiles what it stores afresh, so fits
      stored while JAX's cache is warm load and run.
    """
    cache = tmp_path / "mlefit" / "jax"  # on by default, in the user's cache folder
    store = cache / "mlefit-executables"
    fits = {"a", "b", "g", "e", "s", "r"}
    first = _store_run(tmp_path, 1.0)
    assert first["dir"] == str(cache) and first["misses"] >= 1
    assert cache.stat().st_mode & 0o777 == 0o700  # created private
    # every fit traced once; the refit with a new closure of the same code came from the store
    assert first["fits_traced"] == len(fits) and len(list(store.glob("*.exe"))) == len(fits)
    # mean of linspace(-1, 3) is 1; shifting the data by C moves the mean by -C
    assert first["a"] == pytest.approx(1.0, abs=1e-9)
    assert first["b"] == pytest.approx(0.0, abs=1e-9)
    # two starts of the nonlinear model reach one least-squares fit (a near 3: the curve's
    # asymptote, up to the 0.01 sin term)
    assert [s for s, _ in first["r"]] == ["converged", "converged"]
    assert first["r"][0][1] == pytest.approx(first["r"][1][1], abs=1e-8)
    assert first["r"][0][1] == pytest.approx(3.0, abs=0.01)

    def same_fits(run, traced):
        return {k: run[k] for k in fits | {"status"}} == {k: first[k] for k in fits | {"status"}} \
            and run["fits_traced"] == traced

    again = _store_run(tmp_path, 1.0)
    # the fits' compiled loops (and every small helper) come from disk, nothing recompiles
    assert again["hits"] >= 1 and again["misses"] == 0
    assert same_fits(again, 0)  # all loaded whole, no tracing; bitwise the same results

    # Same code, shapes and dtypes, another closed-over constant: a different program.
    other = _store_run(tmp_path, 2.5)
    assert other["fits_traced"] == 1 and len(list(store.glob("*.exe"))) == len(fits) + 1
    assert other["b"] == pytest.approx(-1.5, abs=1e-9)
    assert {k: other[k] for k in fits - {"b"}} == {k: first[k] for k in fits - {"b"}}

    # Damaged entries are recompiled (JAX's cache is warm now) and replaced, never trusted.
    for f in store.glob("*.exe"):
        f.write_bytes(b"not an executable")
    assert same_fits(_store_run(tmp_path, 1.0), len(fits))
    # the entries this run used were rewritten; the C = 2.5 one was not read
    assert sum(f.stat().st_size > 1000 for f in store.glob("*.exe")) == len(fits)
    # what was stored while JAX's cache was warm loads and runs
    assert same_fits(_store_run(tmp_path, 1.0), 0)


class _Normal(eqx.Module):
    mu: jax.Array
    log_sigma: jax.Array

    def log_prob(self, x):
        return st.norm.logpdf(x, self.mu, jnp.exp(self.log_sigma))


def test_custom_optimizer_and_module_fits_are_not_stored(tmp_path):
    import optax

    from mlefit import _cache, _compiled

    before = jax.config.jax_compilation_cache_dir
    try:
        _cache._ENABLED = str(tmp_path)  # as if enabled, without touching JAX's own cache
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        _compiled.clear_memory()
        x = np.linspace(0.0, 1.0, 20)
        init = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
        mlefit.fit(lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"]), x, init,
                   optimizer=optax.adam(0.1), max_steps=5)
        assert not (tmp_path / "mlefit-executables").exists()
        # an equinox Module's pytree structure does not survive pickling: not stored
        res = mlefit.fit(_Normal(jnp.zeros(()), jnp.zeros(())), x)
        assert res.params.mu == pytest.approx(0.5, abs=1e-9)  # mean of linspace(0, 1)
        assert not (tmp_path / "mlefit-executables").exists()
        mlefit.fit(lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"]), x, init)
        assert len(list((tmp_path / "mlefit-executables").glob("*.exe"))) == 1
    finally:
        _cache._ENABLED = None
        jax.config.update("jax_compilation_cache_dir", before)
        _compiled.clear_memory()


def test_cpu_fits_compile_with_the_classic_fusion_emitters(monkeypatch):
    from mlefit import _compiled

    on_cpu = jax.default_backend() == "cpu"
    expected = {"xla_cpu_use_fusion_emitters": False} if on_cpu else {}
    assert _compiled.compiler_options() == expected
    monkeypatch.setenv("MLEFIT_CPU_FUSION_EMITTERS", "1")  # XLA's default, on request
    assert _compiled.compiler_options() == {}


def _entry(path, size, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_trim_removes_the_least_recently_used_entries_down_to_80_percent(tmp_path):
    from mlefit._cache import trim

    exe = tmp_path / "mlefit-executables"
    old_jax = _entry(tmp_path / "jit_f-aaa-cache", 400, 100)
    old_atime = _entry(tmp_path / "jit_f-aaa-atime", 8, 100)
    old_exe = _entry(exe / "a.exe", 300, 200)
    mid_jax = _entry(tmp_path / "jit_g-bbb-cache", 200, 300)
    new_exe = _entry(exe / "b.exe", 100, 400)
    other = _entry(tmp_path / "notes.txt", 5000, 0)  # not an entry: never counted or removed
    tmp = _entry(exe / "x.tmp", 5000, 0)  # a store being written: left alone
    # 1000 bytes of entries under a 1000-byte limit: nothing to do
    assert trim(tmp_path, 1000) == 0
    assert old_jax.exists() and old_exe.exists()
    # limit 700: remove oldest first until at most 0.8 * 700 = 560 bytes remain
    assert trim(tmp_path, 700) == 700
    assert not old_jax.exists() and not old_atime.exists() and not old_exe.exists()
    assert mid_jax.exists() and new_exe.exists() and other.exists() and tmp.exists()
    assert trim(tmp_path / "missing", 1) == 0  # no folder: nothing to do


def test_cache_size_limit_from_the_environment(monkeypatch):
    from mlefit import _cache

    monkeypatch.delenv(_cache.MAX_MB_VAR, raising=False)
    assert _cache.max_bytes() == _cache.DEFAULT_MAX_MB * 2**20
    monkeypatch.setenv(_cache.MAX_MB_VAR, "0.5")
    assert _cache.max_bytes() == 2**19
    for bad in ("lots", "-3", "0", "nan", "inf"):
        monkeypatch.setenv(_cache.MAX_MB_VAR, bad)
        _cache._WARNED.clear()
        with pytest.warns(RuntimeWarning, match=f"{_cache.MAX_MB_VAR}={bad!r} is not a positive"):
            assert _cache.max_bytes() == _cache.DEFAULT_MAX_MB * 2**20


def test_storing_a_fit_keeps_the_cache_folder_under_its_limit(tmp_path, monkeypatch):
    """A stored fit trims the folder: an old entry goes, the fit just stored stays."""
    from mlefit import _cache, _compiled

    before = jax.config.jax_compilation_cache_dir
    try:
        _cache._ENABLED = str(tmp_path)
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        _compiled.clear_memory()
        x = np.linspace(0.0, 1.0, 20)
        logp = lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"])  # noqa: E731
        init = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
        mlefit.fit(logp, x, init)
        (first,) = (tmp_path / "mlefit-executables").glob("*.exe")
        size = first.stat().st_size
        os.utime(first, (1e9, 1e9))
        stale = _entry(tmp_path / "jit_stale-ccc-cache", size, 1e8)  # the oldest entry
        jax_entries = sum(p.stat().st_size for p in tmp_path.glob("*-cache"))
        # room for JAX's own entries, the stale one and one fit, not two
        monkeypatch.setenv(_cache.MAX_MB_VAR, str((jax_entries + 1.5 * size) / 2**20))
        mlefit.fit(logp, np.linspace(0.0, 1.0, 2000), init)  # another shape: stored anew
        assert not stale.exists() and not first.exists()
        assert len(list((tmp_path / "mlefit-executables").glob("*.exe"))) == 1
    finally:
        _cache._ENABLED = None
        jax.config.update("jax_compilation_cache_dir", before)
        _compiled.clear_memory()
