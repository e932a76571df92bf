"""Streaming sources: SGD over chunks, full-batch L-BFGS over passes, chunked sums.

References are independent of the streaming code: closed forms of the Gaussian MLE
(mean, biased standard deviation), its NLL, gradient and Hessian; a plain optax loop
written here; and ``fit`` on the in-memory arrays (a different code path that shares
only the one SGD step).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.stats as st
import numpy as np
import optax
import pytest

import mlefit

RNG = np.random.default_rng(42)
N, D = 1003, 3
X = RNG.normal(size=(N, D))
Y = (RNG.uniform(size=N) < 1 / (1 + np.exp(-(X @ np.array([1.0, -2.0, 0.5]) + 0.3)))).astype(float)
G = RNG.normal(1.5, 2.0, size=N)  # Gaussian sample for the closed forms


def logistic(p, x, y):
    z = x @ p["b"] + p["c"]
    return y * z - jnp.logaddexp(0.0, z)


def normal(p, x):
    return st.norm.logpdf(x, p["mu"], p["sigma"])


def init():
    return {"b": jnp.zeros(D), "c": 0.0}


@functools.cache
def adam():
    return optax.adam(1e-2)  # one object: fits reuse its compiled steps


def gaussian_closed_form(x, w=None):
    w = np.ones_like(x) if w is None else w
    mu = np.sum(w * x) / np.sum(w)
    sigma = np.sqrt(np.sum(w * (x - mu) ** 2) / np.sum(w))
    return mu, sigma


# -- SGD ----------------------------------------------------------------------------------
def test_global_shuffle_takes_the_steps_of_the_in_memory_fit():
    # Same permutation (fold_in(key, epoch)), same batches, the same compiled step: the
    # zero-weight padding contributes exact zeros, so the parameters agree bitwise. The
    # epoch NLL is summed over chunks in another order (rounding, 1e-15).
    ref = mlefit.fit(logistic, (X, Y), init(), optimizer=adam(), batch_size=64, epochs=3,
                     key=jax.random.key(5))
    s = mlefit.ArrayStream((X, Y), chunk_size=200, shuffle="global")  # rounded to 256 rows
    res = mlefit.fit(logistic, s, init(), optimizer=adam(), batch_size=64, epochs=3,
                     key=jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(res.params["b"]), np.asarray(ref.params["b"]))
    np.testing.assert_array_equal(np.asarray(res.params["c"]), np.asarray(ref.params["c"]))
    np.testing.assert_allclose(res.history, ref.history, rtol=1e-13)
    assert int(res.steps) == int(ref.steps) == 3 * 16
    assert float(res.nll) == pytest.approx(float(ref.nll), rel=1e-13)
    assert float(res.n_obs) == N and res.data is None and res.minibatch


def test_npy_files_and_memory_maps_are_read_in_chunks(tmp_path):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", Y)
    mm = np.load(tmp_path / "y.npy", mmap_mode="r")
    s = mlefit.ArrayStream((str(tmp_path / "X.npy"), mm), chunk_size=300)
    # A whole-file memory map is read with pread, not through the map (white box: the
    # pages of a map would count in the process's resident memory).
    assert [type(c).__name__ for c in s._columns] == ["_FileColumn", "_FileColumn"]
    chunks = list(s)
    assert [len(y) for _, y in chunks] == [300, 300, 300, 103]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([y for _, y in chunks]), Y)
    ref = mlefit.fit(logistic, (X, Y), init(), optimizer=adam(), batch_size=64, epochs=3,
                     key=jax.random.key(5))
    g = mlefit.ArrayStream((tmp_path / "X.npy", tmp_path / "y.npy"), chunk_size=256,
                           shuffle="global")
    res = mlefit.fit(logistic, g, init(), optimizer=adam(), batch_size=64, epochs=3,
                     key=jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(res.params["b"]), np.asarray(ref.params["b"]))


def test_chunk_shuffle_visits_every_observation_once_per_epoch():
    ids = np.arange(N, dtype=float)
    s = mlefit.ArrayStream(ids, chunk_size=256)
    key = jax.random.key(0)
    orders = []
    for epoch in range(2):
        seen = []
        for ch in s.chunks(256, "chunks", key, epoch):
            obs, w = ch.obs[0][ch.order], ch.w[ch.order]
            assert np.all(w[:ch.m] == 1) and np.all(w[ch.m:] == 0)  # padding last
            seen.append(obs[:ch.m])
        order = np.concatenate(seen)
        np.testing.assert_array_equal(np.sort(order), ids)  # a permutation of all rows
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # a fresh shuffle each epoch
    again = np.concatenate([ch.obs[0][ch.order][:ch.m] for ch in s.chunks(256, "chunks", key, 0)])
    np.testing.assert_array_equal(again, orders[0])  # reproducible from the key


def test_sgd_in_file_order_matches_a_plain_optax_loop():
    # shuffle="none": batches 0..63, 64..127, ... of each epoch; the last has 43 rows.
    opt = adam()
    s = mlefit.ArrayStream((X, Y), chunk_size=256, shuffle="none")
    res = mlefit.fit(logistic, s, init(), optimizer=opt, batch_size=64, epochs=2)

    @jax.jit
    def step(p, state, xb, yb):
        f = lambda q: -jnp.mean(jax.vmap(logistic, (None, 0, 0))(q, xb, yb))  # noqa: E731
        g = jax.grad(f)(p)
        upd, state = opt.update(g, state, p)
        return optax.apply_updates(p, upd), state

    p = jax.tree.map(jnp.asarray, init())
    state = opt.init(p)
    for _ in range(2):
        for a in range(0, N, 64):
            p, state = step(p, state, X[a:a + 64], Y[a:a + 64])
    # Rounding only: the reference sums each batch's NLL in another order (1e-15 per
    # step, 32 steps of a contracting iteration).
    np.testing.assert_allclose(np.asarray(res.params["b"]), np.asarray(p["b"]), atol=1e-12)
    np.testing.assert_allclose(float(res.params["c"]), float(p["c"]), atol=1e-12)
    assert int(res.steps) == 2 * 16


def test_the_chunk_step_is_compiled_once():
    traces = []

    def counted(p, x, y):
        traces.append(1)
        return logistic(p, x, y)

    s = mlefit.ArrayStream((X, Y), chunk_size=256)  # 4 chunks per epoch, the last padded
    mlefit.fit(counted, s, init(), optimizer=adam(), batch_size=64, epochs=3)
    # One trace for the output check, one for the SGD chunk kernel, one for the final
    # NLL-and-gradient kernel: not one per chunk (12 chunks were run).
    assert len(traces) <= 3
    before = len(traces)
    mlefit.fit(counted, s, init(), optimizer=adam(), batch_size=64, epochs=3)
    assert len(traces) - before <= 1  # a second fit: only the (uncompiled) output check


def test_float32_stream():
    # The same fit in float32 and float64 (same chunk orders from the same key): float32
    # rounding (6e-8 relative) over 32 Adam steps of size ~1e-2 stays far below 1e-4.
    s32 = mlefit.ArrayStream((X.astype(np.float32), Y.astype(np.float32)), chunk_size=256)
    s64 = mlefit.ArrayStream((X.astype(np.float32).astype(float), Y), chunk_size=256)
    init32 = {"b": jnp.zeros(D, jnp.float32), "c": jnp.float32(0.0)}
    r32 = mlefit.fit(logistic, s32, init32, optimizer=adam(), batch_size=64, epochs=2)
    r64 = mlefit.fit(logistic, s64, init(), optimizer=adam(), batch_size=64, epochs=2)
    assert r32.params["b"].dtype == jnp.float32 and r32.nll.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r32.params["b"]), np.asarray(r64.params["b"]),
                               atol=1e-4)
    np.testing.assert_allclose(r32.history, r64.history, rtol=1e-5)


def test_ctrl_c_between_chunks_returns_the_last_parameters(capsys):
    class StopInEpoch2(mlefit.ArrayStream):
        def chunks(self, rows, order="none", key=None, epoch=0):
            if epoch == 1:
                raise KeyboardInterrupt
            yield from super().chunks(rows, order, key, epoch)

    s = StopInEpoch2((X, Y), chunk_size=256)
    res = mlefit.fit(logistic, s, init(), optimizer=adam(), batch_size=64, epochs=3,
                     progress=True)
    assert res.optimizer_status == mlefit.Status.INTERRUPTED
    assert np.isnan(float(res.nll)) and np.isnan(float(res.grad_norm))  # no final pass
    one = mlefit.fit(logistic, mlefit.ArrayStream((X, Y), chunk_size=256), init(),
                     optimizer=adam(), batch_size=64, epochs=1)
    np.testing.assert_array_equal(np.asarray(res.params["b"]), np.asarray(one.params["b"]))
    assert "obs" in capsys.readouterr().err  # the tqdm bar counts observations


# -- user iterables --------------------------------------------------------------------------
def test_list_of_batches():
    cuts = [0, 256, 512, 768, N]  # the last batch (235 rows) is padded to 256
    batches = [(X[a:b], Y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    res = mlefit.fit(logistic, mlefit.batches(batches), init(), optimizer=adam(), batch_size=64,
                     epochs=2)
    assert int(res.steps) == 2 * (4 + 4 + 4 + 4) and float(res.n_obs) == N
    # In file order, batches of 64 within each 256-row batch: the steps of shuffle="none".
    ref = mlefit.fit(logistic, mlefit.ArrayStream((X, Y), chunk_size=256, shuffle="none"),
                     init(), optimizer=adam(), batch_size=64, epochs=2)
    np.testing.assert_array_equal(np.asarray(res.params["b"]), np.asarray(ref.params["b"]))
    full = mlefit.fit(logistic, mlefit.batches(batches), init(), tol=1e-10)
    assert full.optimizer_status == mlefit.Status.CONVERGED and float(full.grad_norm) <= 1e-10


def test_one_shot_iterator():
    # One epoch of SGD reads the generator once: the estimate is the list's, but no pass is
    # left for the NLL at it. It was a NaN NLL with status non_finite and n_obs 0; now the
    # status is max_steps (no convergence test), n_obs counts the epoch, and a warning
    # says why nll/loglik are NaN.
    gen = ((X[a:a + 256], Y[a:a + 256]) for a in range(0, N, 256))
    with pytest.warns(UserWarning, match="one-shot iterator was read once, for the epoch"):
        res = mlefit.fit(logistic, mlefit.batches(gen), init(), optimizer=adam(),
                         batch_size=64, epochs=1)
    assert int(res.steps) == 16
    listed = mlefit.fit(logistic, mlefit.batches(
        [(X[a:a + 256], Y[a:a + 256]) for a in range(0, N, 256)]), init(), optimizer=adam(),
        batch_size=64, epochs=1)
    np.testing.assert_array_equal(np.asarray(res.params["b"]), np.asarray(listed.params["b"]))
    assert res.status == listed.status == mlefit.Status.MAX_STEPS
    assert float(res.n_obs) == float(listed.n_obs) == N
    assert np.isnan(float(res.nll)) and np.isfinite(float(listed.nll))
    gen = ((X[a:a + 256], Y[a:a + 256]) for a in range(0, N, 256))
    with pytest.raises(ValueError, match="one-shot iterator"):
        mlefit.fit(logistic, mlefit.batches(gen), init(), optimizer=adam(), batch_size=64,
                   epochs=2)


def test_bad_batches():
    with pytest.raises(ValueError, match="batch 1 of epoch 0 has 300 observations"):
        mlefit.fit(logistic, mlefit.batches([(X[:100], Y[:100]), (X[:300], Y[:300])]),
                   init(), optimizer=adam(), batch_size=64, epochs=1)
    with pytest.raises(ValueError, match="batch 1 of epoch 0 has"):
        mlefit.fit(logistic, mlefit.batches([(X[:100], Y[:100]), (X[:100, :2], Y[:100])]),
                   init(), optimizer=adam(), batch_size=64, epochs=1)
    class Empty:
        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="source yielded no batch"):
        mlefit.fit(logistic, mlefit.batches(Empty()), init())


# -- full batch and sums ------------------------------------------------------------------------
def test_full_batch_stream_fit_is_the_closed_form_mle():
    s = mlefit.ArrayStream(G, chunk_size=256)
    res = mlefit.fit(normal, s, {"mu": 0.0, "sigma": mlefit.Positive(1.0)}, tol=1e-10)
    mu, sigma = gaussian_closed_form(G)
    assert res.optimizer_status == mlefit.Status.CONVERGED
    # Gradient max-norm 1e-10 in (mu, softplus^-1 sigma); curvatures 1/sigma^2 ~ 0.25.
    assert float(res.params["mu"]) == pytest.approx(mu, abs=1e-8)
    assert float(res.params["sigma"]) == pytest.approx(sigma, abs=1e-8)
    assert float(res.nll) == pytest.approx(0.5 * np.log(2 * np.pi * sigma**2) + 0.5, rel=1e-12)
    assert res.history[0] > res.history[-1] and not res.minibatch


def test_stream_sums_are_the_closed_forms():
    w = RNG.uniform(0.0, 2.0, size=N)
    s = mlefit.ArrayStream(G, weights=w, chunk_size=256)
    mu, sigma = 1.0, 2.5
    p = {"mu": mu, "sigma": sigma}
    z = (G - mu) / sigma
    nll = np.sum(w * (0.5 * z**2 + np.log(sigma) + 0.5 * np.log(2 * np.pi))) / w.sum()
    assert float(mlefit.stream_nll(normal, p, s)) == pytest.approx(nll, rel=1e-13)
    value, grad = mlefit.stream_value_and_grad(normal, p, s)
    assert float(value) == pytest.approx(nll, rel=1e-13)
    # d nll / d mu = -mean_w(z) / sigma;  d nll / d sigma = (1 - mean_w(z^2)) / sigma.
    mean = lambda a: np.sum(w * a) / w.sum()  # noqa: E731
    assert float(grad["mu"]) == pytest.approx(-mean(z) / sigma, rel=1e-12)
    assert float(grad["sigma"]) == pytest.approx((1 - mean(z**2)) / sigma, rel=1e-12)
    h = np.asarray(mlefit.stream_hessian(normal, p, s))
    # Total-NLL Hessian in (mu, sigma): W/s^2, 2 sum_w(z)/s^2, (3 sum_w(z^2) - W)/s^2.
    W = w.sum()
    expect = np.array([[W, 2 * np.sum(w * z)], [2 * np.sum(w * z), 3 * np.sum(w * z**2) - W]])
    np.testing.assert_allclose(h, expect / sigma**2, rtol=1e-12)


def test_stream_hessian_gives_the_standard_error_of_the_mean():
    s = mlefit.ArrayStream(G, chunk_size=256)
    mu, sigma = gaussian_closed_form(G)
    cov = np.linalg.inv(np.asarray(mlefit.stream_hessian(normal, {"mu": mu, "sigma": sigma}, s)))
    assert np.sqrt(cov[0, 0]) == pytest.approx(sigma / np.sqrt(N), rel=1e-12)
    assert np.sqrt(cov[1, 1]) == pytest.approx(sigma / np.sqrt(2 * N), rel=1e-12)


def test_ready_made_model_and_module_over_a_stream():
    s = mlefit.ArrayStream(G, chunk_size=256)
    res = mlefit.fit(mlefit.models.Normal(), s, tol=1e-10)  # init from the first chunk
    mu, sigma = gaussian_closed_form(G)
    assert float(res.params["loc"]) == pytest.approx(mu, abs=1e-8)
    v = mlefit.stream_nll(mlefit.models.Normal(), {"loc": mu, "scale": sigma}, s)
    assert float(v) == pytest.approx(0.5 * np.log(2 * np.pi * sigma**2) + 0.5, rel=1e-12)


def test_fixed_parameters_over_a_stream():
    """fixed= holds a parameter over a stream as in memory: the Gaussian mean with a fixed
    scale is the sample mean (closed form), a fixed mean gives the scale about it, and a
    ready-made model's fixed scale too; SGD leaves the fixed value untouched."""
    s = mlefit.ArrayStream(G, chunk_size=256)
    res = mlefit.fit(normal, s, {"mu": 0.0, "sigma": mlefit.Positive(1.0)},
                     fixed={"sigma": 3.0}, tol=1e-10)
    assert float(res.params["mu"]) == pytest.approx(G.mean(), abs=1e-8)
    assert float(res.params["sigma"]) == 3.0
    res = mlefit.fit(normal, s, {"mu": 0.0, "sigma": mlefit.Positive(1.0)},
                     fixed={"mu": 1.0}, tol=1e-10)
    assert float(res.params["sigma"]) == pytest.approx(np.sqrt(np.mean((G - 1.0) ** 2)),
                                                       abs=1e-8)
    res = mlefit.fit(mlefit.models.Normal(), s, fixed={"scale": 2.0}, tol=1e-10)
    assert float(res.params["loc"]) == pytest.approx(G.mean(), abs=1e-8)
    assert float(res.params["scale"]) == 2.0
    memory = mlefit.fit(mlefit.models.Normal(), G, fixed={"scale": 2.0}, tol=1e-10)
    assert res.param_names == memory.param_names
    sgd = mlefit.fit(normal, s, {"mu": 0.0, "sigma": mlefit.Positive(1.0)},
                     fixed={"sigma": 3.0}, optimizer=adam(), batch_size=64, epochs=2,
                     key=jax.random.key(0))
    assert float(sgd.params["sigma"]) == 3.0 and np.isfinite(float(sgd.params["mu"]))


def test_penalised_fit_over_a_stream_matches_in_memory():
    """A ridge-penalised logistic fit over a stream (full batch) is the in-memory one: the
    same estimate, objective, penalty and log-likelihood; over batches too. A one-shot
    iterator cannot give the number of observations first: refused."""
    ridge = lambda p: 5.0 * jnp.sum(p["b"] ** 2)  # noqa: E731
    memory = mlefit.fit(logistic, (X, Y), init(), penalty=ridge, optimizer="lbfgs")
    for src in (mlefit.ArrayStream((X, Y), chunk_size=256),
                mlefit.batches([(X[i:i + 300], Y[i:i + 300]) for i in range(0, N, 300)])):
        res = mlefit.fit(logistic, src, init(), penalty=ridge)
        assert res.optimizer_status == mlefit.Status.CONVERGED
        for k in ("b", "c"):
            np.testing.assert_allclose(np.asarray(res.params[k]),
                                       np.asarray(memory.params[k]), atol=1e-7)
        assert float(res.nll) == pytest.approx(float(memory.nll), rel=1e-12)
        assert float(res.penalty) == pytest.approx(float(memory.penalty), rel=1e-7)
        assert float(res.loglik) == pytest.approx(float(memory.loglik), rel=1e-10)
    # the penalty shrinks: the unpenalised fit's slopes are larger
    plain = mlefit.fit(logistic, (X, Y), init())
    assert np.sum(np.asarray(res.params["b"]) ** 2) < np.sum(np.asarray(plain.params["b"]) ** 2)
    w = RNG.uniform(0.5, 2.0, size=N)
    weighted = mlefit.fit(logistic, mlefit.ArrayStream((X, Y), weights=w, chunk_size=256),
                          init(), penalty=ridge)
    ref = mlefit.fit(logistic, (X, Y), init(), weights=w, weights_kind="frequency",
                     penalty=ridge)
    np.testing.assert_allclose(np.asarray(weighted.params["b"]), np.asarray(ref.params["b"]),
                               atol=1e-7)
    # SGD with a global shuffle takes the in-memory penalised fit's steps (rounding only)
    sgd = dict(optimizer=adam(), batch_size=64, epochs=2, key=jax.random.key(5),
               penalty=ridge)
    s = mlefit.ArrayStream((X, Y), chunk_size=200, shuffle="global")
    got, want = mlefit.fit(logistic, s, init(), **sgd), mlefit.fit(logistic, (X, Y), init(), **sgd)
    np.testing.assert_allclose(np.asarray(got.params["b"]), np.asarray(want.params["b"]),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="penalty: a penalised fit needs the number"):
        mlefit.fit(logistic, mlefit.batches(iter([(X, Y)])), init(), penalty=ridge,
                   optimizer=adam(), batch_size=100, epochs=1, key=jax.random.key(0))


# -- bad input ----------------------------------------------------------------------------------
def test_bad_stream_input(tmp_path):
    s = mlefit.ArrayStream((X, Y))
    with pytest.raises(ValueError, match="weights: for a stream"):
        mlefit.fit(logistic, s, init(), weights=np.ones(N))
    with pytest.raises(ValueError, match="mesh: a streamed fit runs on one device"):
        mlefit.fit(logistic, s, init(), mesh=mlefit.data_mesh())
    with pytest.raises(ValueError, match="optimizer: a full-batch fit over a stream"):
        mlefit.fit(logistic, s, init(), optimizer=adam())
    with pytest.raises(ValueError, match="shuffle: expected one of"):
        mlefit.ArrayStream(X, shuffle="random")
    with pytest.raises(ValueError, match="data\\[0\\] has 1003, data\\[1\\] has 10"):
        mlefit.ArrayStream((X, Y[:10]))
    with pytest.raises(ValueError, match="weights: expected shape \\(1003,\\)"):
        mlefit.ArrayStream((X, Y), weights=np.ones(5))
    with pytest.raises(ValueError, match="chunk_size: must be a positive int"):
        mlefit.ArrayStream(X, chunk_size=0)
    with pytest.raises(FileNotFoundError, match="data: no file at"):
        mlefit.ArrayStream(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "f.npy", np.asfortranarray(X))
    with pytest.raises(ValueError, match="Fortran order"):
        mlefit.ArrayStream(str(tmp_path / "f.npy"))
    w = np.ones(N)
    w[7] = -1.0
    with pytest.raises(ValueError, match="weight of observation 7 is -1.0"):
        mlefit.stream_nll(logistic, init(), mlefit.ArrayStream((X, Y), weights=w))
