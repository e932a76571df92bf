"""Unconditional continuous models: one scalar (or vector, for the multivariate normal)
observation per row, parameters as a dict with scipy-compatible names.

Every model gives ``log_prob(params, x)`` from ``jax.scipy.stats`` and a data-driven
``init(x)`` (closed form or method of moments). The scalar ones give ``cdf`` and ``sf``
(``F(x) = P(X <= x)`` and ``1 - F(x)``, used by goodness-of-fit tests and plots), and
``log_cdf`` and ``log_sf`` (used by :class:`~mlefit.models.Censored`) except where JAX has
no twice-differentiable CDF (StudentT, Beta, Gamma).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import jax.scipy.stats as jstats
import numpy as np

from .._constraints import Positive
from .._model import AbstractModel
from ._base import (
    array_namespace,
    as_float,
    check_support,
    checked,
    data_driven_start,
    require_spread,
    sample_shape,
    spread,
)

__all__ = [
    "Normal",
    "LogNormal",
    "Exponential",
    "Gamma",
    "Weibull",
    "Beta",
    "StudentT",
    "Laplace",
    "MultivariateNormal",
]


_SAME = "observations are equal (zero spread)"


def _dtype(*params):
    return jnp.result_type(*(jnp.asarray(p) for p in params), float)


def _log_one_minus_exp(t):
    """``log(1 - exp(-t))`` for ``t > 0``, accurate for small ``t`` (via ``expm1``)."""
    return jnp.log(-jnp.expm1(-t))


class Normal(AbstractModel):
    """Normal distribution ``N(loc, scale^2)``; params ``{"loc": real, "scale": > 0}``.

    ``log p(x) = -((x - loc) / scale)^2 / 2 - log(scale) - log(2 pi) / 2``, ``x`` real.
    Same as ``scipy.stats.norm(loc, scale)``. Start: the closed-form MLE (mean and the
    biased standard deviation), so the fit only confirms it.

    Example:
        >>> import numpy as np, mlefit
        >>> res = mlefit.fit(mlefit.models.Normal(), np.array([1.0, 2.0, 4.0]))
        >>> round(float(res.params["loc"]), 4)
        2.3333
    """

    def log_prob(self, params, x):
        return jstats.norm.logpdf(x, params["loc"], params["scale"])

    def log_cdf(self, params, x):
        return jstats.norm.logcdf(x, params["loc"], params["scale"])

    def log_sf(self, params, x):
        return jstats.norm.logsf(x, params["loc"], params["scale"])

    def cdf(self, params, x):
        """``F(x) = P(X <= x)``, as ``exp(log_cdf)``."""
        return jnp.exp(self.log_cdf(params, x))

    def sf(self, params, x):
        """``S(x) = 1 - F(x)``, as ``exp(log_sf)`` (accurate in the upper tail)."""
        return jnp.exp(self.log_sf(params, x))

    def _interior_point(self, params):
        return params["loc"]

    def check_data(self, x) -> None:
        check_support(self.name, x)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        a = as_float(xp, x)
        s = a.std()
        ok = spread(a) & (s > 0)
        return {
            "loc": a.mean(),
            "scale": Positive(checked(xp, self.name, ok, s, f"all {a.size} {_SAME}")),
        }

    def sample(self, key, params, n):
        """``n`` draws (an int or a shape) ``loc + scale * z``, ``z ~ N(0, 1)``."""
        z = jax.random.normal(key, sample_shape(n), _dtype(params["loc"], params["scale"]))
        return params["loc"] + params["scale"] * z


class LogNormal(AbstractModel):
    """Log-normal distribution: ``log x ~ N(mu, sigma^2)``; params ``{"mu": real, "sigma": > 0}``.

    ``log p(x) = log N(log x; mu, sigma^2) - log x``, ``x > 0``. In scipy's terms
    ``scipy.stats.lognorm(s=sigma, scale=exp(mu))`` (``loc = 0``). Start: the closed-form
    MLE (mean and biased standard deviation of ``log x``).
    """

    def log_prob(self, params, x):
        logx = jnp.log(x)
        return jstats.norm.logpdf(logx, params["mu"], params["sigma"]) - logx

    def log_cdf(self, params, x):
        return jstats.norm.logcdf(jnp.log(x), params["mu"], params["sigma"])

    def log_sf(self, params, x):
        return jstats.norm.logsf(jnp.log(x), params["mu"], params["sigma"])

    def cdf(self, params, x):
        """``F(x) = P(X <= x)``, as ``exp(log_cdf)``."""
        return jnp.exp(self.log_cdf(params, x))

    def sf(self, params, x):
        """``S(x) = 1 - F(x)``, as ``exp(log_sf)`` (accurate in the upper tail)."""
        return jnp.exp(self.log_sf(params, x))

    def _interior_point(self, params):
        return jnp.exp(params["mu"])

    def check_data(self, x) -> None:
        check_support(self.name, x, low=0.0)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        logx = xp.log(as_float(xp, x))
        s = logx.std()
        ok = spread(logx) & (s > 0)
        return {
            "mu": logx.mean(),
            "sigma": Positive(checked(xp, self.name, ok, s, f"all {logx.size} {_SAME}")),
        }

    def sample(self, key, params, n):
        """``n`` draws ``exp(mu + sigma * z)``, ``z ~ N(0, 1)``."""
        z = jax.random.normal(key, sample_shape(n), _dtype(params["mu"], params["sigma"]))
        return jnp.exp(params["mu"] + params["sigma"] * z)


class Exponential(AbstractModel):
    """Exponential distribution; params ``{"rate": > 0}``.

    ``log p(x) = log(rate) - rate * x``, ``x >= 0``; ``scipy.stats.expon(scale=1/rate)``.
    Start: the closed-form MLE ``rate = 1 / mean(x)``.
    """

    def log_prob(self, params, x):
        return jstats.expon.logpdf(x, scale=1.0 / params["rate"])

    def log_cdf(self, params, x):
        # jax's expon.logcdf is log1p(-exp(-t)), which loses digits for small t.
        return _log_one_minus_exp(params["rate"] * x)

    def log_sf(self, params, x):
        return jstats.expon.logsf(x, scale=1.0 / params["rate"])

    def cdf(self, params, x):
        """``F(x) = P(X <= x)``, as ``exp(log_cdf)``."""
        return jnp.exp(self.log_cdf(params, x))

    def sf(self, params, x):
        """``S(x) = 1 - F(x)``, as ``exp(log_sf)`` (accurate in the upper tail)."""
        return jnp.exp(self.log_sf(params, x))

    def _interior_point(self, params):
        return jnp.log(2.0) / params["rate"]

    def check_data(self, x) -> None:
        check_support(self.name, x, low=0.0, low_open=False)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        m = as_float(xp, x).mean()
        ok = m > 0
        rate = 1.0 / xp.where(ok, m, 1.0)
        what = "all observations are 0 (the MLE rate is infinite)"
        return {"rate": Positive(checked(xp, self.name, ok, rate, what))}

    def sample(self, key, params, n):
        """``n`` draws ``e / rate``, ``e ~ Exp(1)``."""
        e = jax.random.exponential(key, sample_shape(n), _dtype(params["rate"]))
        return e / params["rate"]


class Gamma(AbstractModel):
    """Gamma distribution; params ``{"shape": > 0, "scale": > 0}``.

    ``log p(x) = (shape - 1) log x - x / scale - lgamma(shape) - shape * log(scale)``,
    ``x > 0``; ``scipy.stats.gamma(a=shape, scale=scale)`` (mean ``shape * scale``).
    Start: Minka's closed-form approximation of the shape MLE from
    ``s = log(mean x) - mean(log x)``: ``shape = (3 - s + sqrt((s - 3)^2 + 24 s)) / (12 s)``
    (within 1.5% of the MLE), ``scale = mean(x) / shape``.
    No ``log_cdf``: JAX cannot differentiate the incomplete gamma function twice in
    ``shape``, which standard errors (and the Newton polish) need.
    """

    def log_prob(self, params, x):
        return jstats.gamma.logpdf(x, params["shape"], scale=params["scale"])

    def cdf(self, params, x):
        """``F(x) = P(shape, x / scale)``, the regularised lower incomplete gamma function
        (values only: not twice differentiable in ``shape``)."""
        return jsp.gammainc(params["shape"], jnp.maximum(x, 0.0) / params["scale"])

    def sf(self, params, x):
        """``S(x) = Q(shape, x / scale)``, the regularised upper incomplete gamma function."""
        return jsp.gammaincc(params["shape"], jnp.maximum(x, 0.0) / params["scale"])

    def check_data(self, x) -> None:
        check_support(self.name, x, low=0.0)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        a = as_float(xp, x)
        m = a.mean()
        s = xp.log(m) - xp.log(a).mean()
        ok = spread(a) & (s > 0)
        s = checked(xp, self.name, ok, xp.where(ok, s, 1.0), f"all {a.size} {_SAME}")
        shape = (3.0 - s + xp.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
        return {"shape": Positive(shape), "scale": Positive(m / shape)}

    def sample(self, key, params, n):
        """``n`` draws ``scale * g``, ``g ~ Gamma(shape, 1)``."""
        dt = _dtype(params["shape"], params["scale"])
        g = jax.random.gamma(key, jnp.asarray(params["shape"], dt), sample_shape(n), dt)
        return params["scale"] * g


class Weibull(AbstractModel):
    """Weibull distribution; params ``{"shape": > 0, "scale": > 0}``.

    ``log p(x) = log(shape / scale) + (shape - 1) log(x / scale) - (x / scale)^shape``,
    ``x > 0``; ``scipy.stats.weibull_min(c=shape, scale=scale)``. Computed as the
    Gumbel (minimum) density (``jax.scipy.stats.gumbel_l``) of
    ``z = shape * log(x / scale)`` plus ``log(shape) - log x``.
    Start: Gumbel moments of ``log x``: ``shape = pi / (sqrt(6) sd(log x))``,
    ``scale = exp(mean(log x) + euler_gamma / shape)``.
    """

    def _gumbel_z(self, params, x):
        # Standardised: jax's gumbel_l.logpdf has a float0 bug in its gradient in `scale`.
        return params["shape"] * (jnp.log(x) - jnp.log(params["scale"]))

    def log_prob(self, params, x):
        z = self._gumbel_z(params, x)
        return jstats.gumbel_l.logpdf(z) + jnp.log(params["shape"]) - jnp.log(x)

    def log_cdf(self, params, x):
        return jstats.gumbel_l.logcdf(self._gumbel_z(params, x))

    def log_sf(self, params, x):
        return jstats.gumbel_l.logsf(self._gumbel_z(params, x))

    def cdf(self, params, x):
        """``F(x) = P(X <= x)``, as ``exp(log_cdf)``."""
        return jnp.exp(self.log_cdf(params, x))

    def sf(self, params, x):
        """``S(x) = 1 - F(x)``, as ``exp(log_sf)`` (accurate in the upper tail)."""
        return jnp.exp(self.log_sf(params, x))

    def _interior_point(self, params):
        return params["scale"] * jnp.log(2.0) ** (1.0 / params["shape"])

    def check_data(self, x) -> None:
        check_support(self.name, x, low=0.0)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        logx = xp.log(as_float(xp, x))
        sd = logx.std()
        ok = spread(logx) & (sd > 0)
        sd = checked(xp, self.name, ok, xp.where(ok, sd, 1.0), f"all {logx.size} {_SAME}")
        shape = np.pi / (np.sqrt(6.0) * sd)
        return {
            "shape": Positive(shape),
            "scale": Positive(xp.exp(logx.mean() + np.euler_gamma / shape)),
        }

    def sample(self, key, params, n):
        """``n`` draws from ``weibull_min(shape, scale)``."""
        dt = _dtype(params["shape"], params["scale"])
        return jax.random.weibull_min(key, params["scale"], params["shape"], sample_shape(n), dt)


class Beta(AbstractModel):
    """Beta distribution on ``(0, 1)``; params ``{"a": > 0, "b": > 0}``.

    ``log p(x) = (a - 1) log x + (b - 1) log(1 - x) - log B(a, b)``, ``0 < x < 1``;
    ``scipy.stats.beta(a, b)``. Start: the method of moments
    ``a = m c, b = (1 - m) c, c = m (1 - m) / v - 1`` (mean ``m``, variance ``v``).
    No ``log_cdf``: JAX has no gradient of ``betainc`` in ``a`` and ``b``.
    """

    def log_prob(self, params, x):
        return jstats.beta.logpdf(x, params["a"], params["b"])

    def cdf(self, params, x):
        """``F(x) = I_x(a, b)``, the regularised incomplete beta function (values only: JAX
        has no gradient of it in ``a`` and ``b``)."""
        return jsp.betainc(params["a"], params["b"], jnp.clip(x, 0.0, 1.0))

    def sf(self, params, x):
        """``S(x) = I_{1-x}(b, a)``."""
        return jsp.betainc(params["b"], params["a"], jnp.clip(1.0 - x, 0.0, 1.0))

    def check_data(self, x) -> None:
        check_support(self.name, x, low=0.0, high=1.0)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        a = as_float(xp, x)
        m, v = a.mean(), a.var()
        ok = spread(a) & (v > 0)
        v = checked(xp, self.name, ok, xp.where(ok, v, 1.0), f"all {a.size} {_SAME}")
        # v < m (1 - m) holds for any data strictly inside (0, 1).
        c = xp.maximum(m * (1.0 - m) / v - 1.0, 1e-3)
        return {"a": Positive(m * c), "b": Positive((1.0 - m) * c)}

    def sample(self, key, params, n):
        """``n`` draws from ``Beta(a, b)``."""
        dt = _dtype(params["a"], params["b"])
        return jax.random.beta(key, params["a"], params["b"], sample_shape(n), dt)


class StudentT(AbstractModel):
    """Student's t location-scale distribution; params ``{"df": > 0, "loc": real, "scale": > 0}``.

    ``log p(x) = lgamma((df+1)/2) - lgamma(df/2) - log(pi df)/2 - log(scale)
    - (df+1)/2 log(1 + z^2/df)``, ``z = (x - loc) / scale``; ``scipy.stats.t(df, loc, scale)``.
    Start: ``loc = median``, ``scale = 1.4826 * MAD`` (robust to heavy tails), ``df = 5``.
    For light-tailed samples the MLE of ``df`` can be infinite (a normal): the fit then
    stops at a large ``df`` where the gradient falls below ``tol``; read ``df`` before
    trusting it. No ``log_cdf`` (JAX has no t CDF).
    """

    def log_prob(self, params, x):
        return jstats.t.logpdf(x, params["df"], params["loc"], params["scale"])

    def _tail(self, params, x):
        """``(z, P(T > |z|))`` with ``P(T > |z|) = I_{df / (df + z^2)}(df / 2, 1 / 2) / 2``."""
        z = (x - params["loc"]) / params["scale"]
        df = params["df"]
        return z, 0.5 * jsp.betainc(0.5 * df, 0.5, df / (df + z * z))

    def cdf(self, params, x):
        """``F(x)`` through the incomplete beta function (values only; JAX has no t CDF)."""
        z, tail = self._tail(params, x)
        return jnp.where(z < 0, tail, 1.0 - tail)

    def sf(self, params, x):
        """``S(x) = F(-x)`` by symmetry about ``loc``."""
        z, tail = self._tail(params, x)
        return jnp.where(z > 0, tail, 1.0 - tail)

    def check_data(self, x) -> None:
        check_support(self.name, x)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        a = as_float(xp, x)
        med = xp.median(a)
        mad = 1.4826 * xp.median(xp.abs(a - med))
        mad = xp.where(mad > 0, mad, a.std())
        scale = checked(xp, self.name, spread(a) & (mad > 0), mad, f"all {a.size} {_SAME}")
        return {"df": Positive(5.0), "loc": med, "scale": Positive(scale)}

    def sample(self, key, params, n):
        """``n`` draws ``loc + scale * t``, ``t ~ t(df)``."""
        dt = _dtype(params["df"], params["loc"], params["scale"])
        t = jax.random.t(key, params["df"], sample_shape(n), dt)
        return params["loc"] + params["scale"] * t


class Laplace(AbstractModel):
    """Laplace (double exponential) distribution; params ``{"loc": real, "scale": > 0}``.

    ``log p(x) = -|x - loc| / scale - log(2 scale)``; ``scipy.stats.laplace(loc, scale)``.
    Start: the closed-form MLE ``loc = median``, ``scale = mean |x - median|``. The
    likelihood has a kink at every observation and zero curvature in ``loc`` between
    them (even ``n``: every point between the middle two observations is an MLE), so
    the observed information gives no standard error for ``loc``. The model declares
    itself non-smooth (``smooth = False``): inference uses the expected (Fisher)
    information per observation, ``I = diag(1 / scale^2, 1 / scale^2)`` (``loc``,
    ``scale``), so ``se(loc) = scale / sqrt(n)``, the asymptotic standard error of the
    sample median of a Laplace sample, ``1 / (2 f(loc) sqrt(n))``.
    """

    smooth = False

    def log_prob(self, params, x):
        return jstats.laplace.logpdf(x, params["loc"], params["scale"])

    def fisher_information(self, params, x=None):
        """``diag(1 / scale^2, 1 / scale^2)`` over ``(loc, scale)``, one observation:
        ``E[sign(z)^2] = 1`` and ``Var(|z| - 1) = 1`` for ``z ~ Laplace(0, 1)``."""
        i = 1.0 / jnp.asarray(params["scale"]) ** 2
        return jnp.diag(jnp.stack([i, i]))

    def log_cdf(self, params, x):
        # jax has no laplace.logcdf; both branches are finite everywhere.
        z = (x - params["loc"]) / params["scale"]
        return jnp.where(
            z < 0,
            jnp.log(0.5) + jnp.minimum(z, 0.0),
            jnp.log1p(-0.5 * jnp.exp(-jnp.maximum(z, 0.0))),
        )

    def log_sf(self, params, x):
        z = (x - params["loc"]) / params["scale"]
        return jnp.where(
            z > 0,
            jnp.log(0.5) - jnp.maximum(z, 0.0),
            jnp.log1p(-0.5 * jnp.exp(jnp.minimum(z, 0.0))),
        )

    def cdf(self, params, x):
        """``F(x) = P(X <= x)``, as ``exp(log_cdf)``."""
        return jnp.exp(self.log_cdf(params, x))

    def sf(self, params, x):
        """``S(x) = 1 - F(x)``, as ``exp(log_sf)`` (accurate in the upper tail)."""
        return jnp.exp(self.log_sf(params, x))

    def _interior_point(self, params):
        return params["loc"]

    def check_data(self, x) -> None:
        check_support(self.name, x)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        a = as_float(xp, x)
        med = xp.median(a)
        b = xp.abs(a - med).mean()
        return {
            "loc": med,
            "scale": Positive(checked(xp, self.name, b > 0, b, f"all {a.size} {_SAME}")),
        }

    def sample(self, key, params, n):
        """``n`` draws ``loc + scale * l``, ``l ~ Laplace(0, 1)``."""
        dt = _dtype(params["loc"], params["scale"])
        return params["loc"] + params["scale"] * jax.random.laplace(key, sample_shape(n), dt)


class MultivariateNormal(AbstractModel):
    """Multivariate normal ``N(loc, L L^T)`` with a Cholesky-parametrised covariance.

    Params ``{"loc": (d,), "chol_diag": (d,) > 0, "chol_lower": (d (d - 1) / 2,) real}``:
    ``L`` is lower triangular with ``diag(L) = chol_diag`` and the strictly lower part
    ``chol_lower`` in row-major order (``numpy.tril_indices(d, -1)``), so every parameter
    value is a valid covariance. ``d`` is read from the shape of ``loc``.

    ``log p(x) = -|L^-1 (x - loc)|^2 / 2 - sum_j log L_jj - d log(2 pi) / 2``
    (checked against ``scipy.stats.multivariate_normal``). Start: the closed-form MLE
    (mean, biased covariance) through its Cholesky factor. Data: ``(n, d)``, ``n > d``.
    Use :meth:`cholesky` and :meth:`covariance` to read the estimate.
    """

    @staticmethod
    def cholesky(params) -> jax.Array:
        """The lower-triangular factor ``L`` (``covariance = L L^T``)."""
        diag = jnp.asarray(params["chol_diag"])
        d = diag.shape[-1]
        rows, cols = np.tril_indices(d, -1)
        L = jnp.zeros((d, d), diag.dtype).at[rows, cols].set(params["chol_lower"])
        return L + jnp.diag(diag)

    @classmethod
    def covariance(cls, params) -> jax.Array:
        """``Sigma = L L^T``."""
        L = cls.cholesky(params)
        return L @ L.T

    def log_prob(self, params, x):
        # No jax.scipy density takes a Cholesky factor; a triangular solve is the stable form.
        L = self.cholesky(params)
        z = jax.scipy.linalg.solve_triangular(L, x - params["loc"], lower=True)
        d = z.shape[-1]
        return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * d * jnp.log(2 * jnp.pi)

    def check_data(self, x) -> None:
        check_support(self.name, x, ndim=2)

    @data_driven_start
    def init(self, x):
        xp = array_namespace(x)
        a = as_float(xp, x)
        n, d = a.shape
        require_spread(
            self.name, n > d, f"{n} observations cannot identify a {d}x{d} covariance (need n > d)"
        )
        mean = a.mean(axis=0)
        r = a - mean
        cov = r.T @ r / n
        if xp is np:
            try:
                L = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                L = np.full_like(cov, np.nan)
        else:
            L = jnp.linalg.cholesky(cov)  # NaN when not positive definite
        diag = xp.diagonal(L)
        ok = xp.all(diag > 0)  # False for NaN
        what = "the sample covariance is singular (collinear or constant columns)"
        rows, cols = np.tril_indices(d, -1)
        return {
            "loc": mean,
            "chol_diag": Positive(checked(xp, self.name, ok, diag * 1.0, what)),
            "chol_lower": L[rows, cols],
        }

    def sample(self, key, params, n):
        """``n`` draws ``loc + L z``, ``z ~ N(0, I_d)``; shape ``(n, d)``."""
        L = self.cholesky(params)
        z = jax.random.normal(key, (*sample_shape(n), L.shape[0]), L.dtype)
        return params["loc"] + z @ L.T
