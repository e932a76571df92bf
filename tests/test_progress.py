"""Progress bars between compiled chunks, and Ctrl-C returning the best point so far."""

import jax.scipy.stats as st
import numpy as np
import optax

import mlefit
import mlefit._program as fit_module

from .helpers import rel_err


def normal(p, x):
    return st.norm.logpdf(x, p["mu"], p["sigma"])


INIT = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
X = np.random.default_rng(7).normal(3.0, 2.0, 500)


def test_progress_fit_equals_plain_fit(capsys):
    plain = mlefit.fit(normal, X, init=INIT)
    shown = mlefit.fit(normal, X, init=INIT, progress={"file": None, "mininterval": 0})
    # The chunked run takes the same steps as the single compiled loop: same answer.
    assert shown.status == plain.status == mlefit.Status.CONVERGED
    assert int(shown.steps) == int(plain.steps)
    assert rel_err(shown.params["mu"], plain.params["mu"]) < 1e-12
    np.testing.assert_allclose(shown.history, plain.history, rtol=1e-12)


def test_progress_bar_reports_steps_and_nll():
    import io

    buf = io.StringIO()
    mlefit.fit(normal, X, init=INIT, progress={"file": buf, "mininterval": 0, "leave": True})
    text = buf.getvalue()
    assert "step" in text and "nll=" in text


def test_ctrl_c_returns_best_point_so_far(monkeypatch):
    calls = {"n": 0}
    real = fit_module._wait

    def interrupted_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_wait", interrupted_on_third_chunk)
    res = mlefit.fit(
        normal,
        X,
        init=INIT,
        optimizer=optax.adam(1e-3),
        max_steps=100_000,
        progress={"file": None},
    )
    assert res.status == mlefit.Status.INTERRUPTED and not res.converged
    # Two chunks ran (8 steps, then at most 4 x 8 while chunks are fast).
    assert 8 <= int(res.steps) <= 40
    assert np.isfinite(float(res.params["mu"]))
    # The best point so far is better than the start.
    assert float(res.nll) < float(mlefit.nll(normal, {"mu": 0.0, "sigma": 1.0}, X))


CTRL_C_CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background child ignores it
import jax, numpy as np, optax, jax.scipy.stats as st
jax.config.update("jax_enable_x64", True)
import mlefit
jax.monitoring.register_event_duration_secs_listener(  # says when each program is compiled
    lambda name, d, **kw: print("compiled", kw.get("fun_name"), flush=True)
    if name == "/jax/core/compile/backend_compile_duration" else None)
x = np.random.default_rng(0).normal(3.0, 2.0, 20_000)
logp = lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"])
init, sgd = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}, optax.sgd(1e-9)
print("fitting", flush=True)
res = mlefit.fit(logp, x, init, optimizer=sgd, max_steps=10**9, tol=0.0)
print("status", res.status, "steps", int(res.steps), flush=True)
"""


def test_ctrl_c_stops_a_long_fit_without_progress_bar_promptly(tmp_path):
    """Issue 17: Ctrl-C during a long full-batch fit (progress=False) ends it within a
    second or two, with the best point so far and status interrupted, not a traceback
    and a process that runs on for a minute."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "MLEFIT_CACHE_DIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "fitting"
        # the first chunk's program, then the one that continues a fit (a 1e9-step budget
        # runs in chunks and never ends): once that is compiled, the fit is running
        for line in child.stdout:
            if "_program_continue" in line:
                break
        else:
            raise AssertionError(f"the child ended before fitting: {child.stderr.read()[-2000:]}")
        time.sleep(1.0)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert child.returncode == 0, err[-2000:]
    assert "status interrupted" in out, (out, err[-2000:])
    assert int(out.split("steps")[1]) > 0
    # Chunks last about 0.5 s; 5 s leaves room for a loaded CI machine.
    assert took < 5.0, took


def test_minibatch_progress_is_per_epoch_and_changes_nothing():
    import io

    kw = dict(init=INIT, optimizer=optax.sgd(0.05), batch_size=50, epochs=4)
    plain = mlefit.fit(normal, X, **kw)
    buf = io.StringIO()
    shown = mlefit.fit(normal, X, progress={"file": buf, "mininterval": 0, "leave": True}, **kw)
    # Chunks of one epoch run the same compiled steps: bitwise the same fit.
    np.testing.assert_array_equal(np.asarray(shown.params["mu"]), np.asarray(plain.params["mu"]))
    np.testing.assert_array_equal(shown.history, plain.history)
    assert "4/4" in buf.getvalue() and "epoch" in buf.getvalue()
