"""Progress bars between compiled chunks, and Ctrl-C returning the best point so far."""

import jax.scipy.stats as st
import numpy as np
import optax

import mlefit
import mlefit._fit as fit_module

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
    real = fit_module._run_compiled

    def interrupted_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_run_compiled", interrupted_on_third_chunk)
    res = mlefit.fit(
        normal,
        X,
        init=INIT,
        optimizer=optax.adam(1e-3),
        max_steps=100_000,
        progress={"file": None},
    )
    assert res.status == mlefit.Status.INTERRUPTED and not res.converged
    # Two chunks ran (8 + 16 steps at most, doubling while chunks are fast).
    assert 8 <= int(res.steps) <= 24
    assert np.isfinite(float(res.params["mu"]))
    # The best point so far is better than the start.
    assert float(res.nll) < float(mlefit.nll(normal, {"mu": 0.0, "sigma": 1.0}, X))


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
