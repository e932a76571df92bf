"""The opt-in persistent compilation cache: a fresh process reuses a compiled fit."""

import json
import os
import subprocess
import sys

import pytest

import mlefit

# A fresh process: fits a small Gaussian, counts JAX's persistent-cache hits and misses.
_PROBE = r"""
import json, sys
import jax
events = {"hits": 0, "misses": 0}
def on_event(name, **kw):
    if name == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
    elif name == "/jax/compilation_cache/cache_misses":
        events["misses"] += 1
jax.monitoring.register_event_listener(on_event)
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, jax.scipy.stats as st
import mlefit
x = jnp.linspace(-1.0, 3.0, 50)
res = mlefit.fit(lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"]), x,
                 {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
events["mu"] = float(res.params["mu"])
events["dir"] = jax.config.jax_compilation_cache_dir
print(json.dumps(events))
"""


def _run(env_dir):
    env = dict(os.environ, MLEFIT_CACHE_DIR=env_dir, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=240, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_env_var_turns_cache_on_and_second_process_hits(tmp_path):
    d = str(tmp_path / "cache")
    first = _run(d)
    assert first["dir"] == d
    assert first["misses"] >= 1 and os.listdir(d)  # compiled fits were written
    second = _run(d)
    # the fit's compiled loop (and every small helper) comes from disk, nothing recompiles
    assert second["hits"] >= 1 and second["misses"] == 0
    assert second["mu"] == pytest.approx(1.0, abs=1e-9)  # mean of linspace(-1, 3)


def test_no_env_var_means_no_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLEFIT_CACHE_DIR"}
    code = "import jax, mlefit; print(repr(jax.config.jax_compilation_cache_dir))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "None"


def test_enable_compilation_cache_rejects_a_file(tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        mlefit.enable_compilation_cache(str(f))
    with pytest.raises(TypeError, match="path: expected a directory path"):
        mlefit.enable_compilation_cache(3)
