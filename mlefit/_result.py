"""The result of a fit: an immutable pytree of values, with its outcome as data."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_traced
from ._inference import (
    _unflatten,
    inference_of,
    labelled_cov,
    labelled_matrix,
    n_params,
    param_names_of,
    refined_status_code,
)
from ._labelled import optional_pandas
from ._model import Problem
from ._predict import predict_of
from ._profile import profile_of
from ._report import confint_of, html_of, param_table, summary_of
from ._status import Status
from ._traced import NOT_AVAILABLE

__all__ = ["FitResult"]


class FitResult(eqx.Module):
    """The outcome of :func:`mlefit.fit`: estimate, objective, status and history.

    Conventions (stated once): the objective is the mean NLL
    ``nll = -(1/n) sum_i log p(obs_i; params)``; ``loglik = -n_obs * nll``. With a
    penalty ``f`` (``fit(..., penalty=f)``) the objective is ``nll + f / n_obs``: ``nll``
    holds that penalised mean, ``penalty`` the value of ``f``, and ``loglik`` (hence AIC,
    BIC, ``lr_test``) the likelihood alone, ``-n_obs * nll + penalty``.

    Attributes:
        params: the estimate, same structure as ``init`` (constrained values), or the
            fitted equinox Module. For a table (a pandas DataFrame with one row per
            scalar parameter, not ``pd.DataFrame(res.params)``) use :meth:`to_frame`.
        nll: mean negative log-likelihood at ``params`` (the mean penalised objective,
            ``nll + penalty / n_obs``, for a penalised fit).
        n_obs: number of observations: the sum of the weights for frequency weights,
            the number of positive weights for variance weights (``weights_kind``).
        status_code: integer code of :class:`Status` (``res.status`` gives the enum).
        steps: optimiser steps taken.
        grad_norm: max-norm of the gradient of the mean NLL (unconstrained
            parametrisation) at ``params``.
        history_buffer: mean NLL after each step (index 0: the start), NaN-padded;
            per epoch for minibatch fits. ``res.history`` trims it.
        u: the estimate in the unconstrained parametrisation the optimiser used.
        tol: the gradient tolerance the fit used (``None``: the dtype's default).
        weights: the observation weights inference uses (variance weights rescaled to
            sum to ``n_obs``; see :mod:`mlefit._weights`), or ``None``.
        weights_kind: ``"frequency"`` or ``"variance"``: what the weights mean.
        source: for a fit over a stream (``data`` is then ``None``), the stream, with
            the method ``analyse(logp, transforms, u, kind)`` that computes the
            inference (covariance, standard errors) by one pass over it; ``None`` for
            data in memory.
        penalty: ``f(params)`` of a penalised (MAP) fit, on the total-NLL scale; ``None``
            without a penalty.
    """

    params: Any
    u: Any
    nll: jax.Array
    n_obs: jax.Array
    status_code: jax.Array
    steps: jax.Array
    grad_norm: jax.Array
    history_buffer: jax.Array | None
    data: tuple
    weights: jax.Array | None
    problem: Problem = eqx.field(static=True)
    transforms: tuple = eqx.field(static=True)
    minibatch: bool = eqx.field(static=True, default=False)
    tol: float | None = eqx.field(static=True, default=None)
    penalty: jax.Array | None = None
    weights_kind: str = eqx.field(static=True, default="frequency")
    source: Any = eqx.field(static=True, default=None)

    # -- outcome -----------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple:
        """Leading shape of a batched result (``()`` for a single fit)."""
        return tuple(jnp.shape(self.nll))

    @property
    def status(self):
        """The :class:`Status` of the fit (an array of them for a batched result).

        The optimiser's verdict refined by inference (computed on first access, cached):
        a fit that converged (or stalled) with a constrained parameter at its bound is
        ``AT_BOUND``; one that converged where the Hessian of the NLL is not positive
        definite is ``HESSIAN_NOT_POSITIVE_DEFINITE``. ``MAX_STEPS``, ``NON_FINITE``, ...
        are kept as the optimiser reported them (``optimizer_status``). Models with more
        than 2000 parameters skip the Hessian check here (``res.cov`` still computes it).
        """
        _host_only(self, "status")
        return _as_status(refined_status_code(self))

    @property
    def optimizer_status(self):
        """The :class:`Status` as the optimiser reported it, before the inference checks."""
        _host_only(self, "optimizer_status")
        return _as_status(np.asarray(self.status_code))

    @property
    def converged(self):
        """``True`` where ``status`` is ``CONVERGED``: the optimiser converged, the Hessian
        is positive definite and no parameter is at a bound (iminuit's ``valid``).

        ``optimizer_status`` says whether the optimiser alone converged.
        """
        _host_only(self, "converged")
        return jnp.asarray(refined_status_code(self) == Status.CONVERGED)

    @property
    def loglik(self) -> jax.Array:
        """Total log-likelihood at the estimate, ``-n_obs * nll`` (the penalty excluded:
        ``-n_obs * nll + penalty`` for a penalised fit)."""
        xp = _xp(self.n_obs, self.nll)
        ll = -xp.asarray(self.n_obs) * xp.asarray(self.nll)
        return ll if self.penalty is None else ll + xp.asarray(self.penalty)

    @property
    def objective(self) -> jax.Array:
        """The total objective minimised, ``-loglik + penalty`` (``-loglik`` without one)."""
        xp = _xp(self.n_obs, self.nll)
        return xp.asarray(self.n_obs) * xp.asarray(self.nll)

    @property
    def history(self):
        """Mean NLL per step (index 0: the start), or per epoch for minibatch fits."""
        _host_only(self, "history")
        if self.history_buffer is None:
            return None
        h = np.asarray(self.history_buffer)
        if h.ndim == 1:
            return h[~np.isnan(h)]
        return h

    @property
    def model_name(self) -> str:
        return self.problem.name

    # -- indexing of batched results --------------------------------------------------
    def __getitem__(self, i) -> FitResult:
        """The ``i``-th fit of a batched result, as an ordinary ``FitResult``."""
        if not self.batch_shape:
            raise TypeError("this FitResult is a single fit; indexing is for batched results")
        return jax.tree.map(lambda x: x[i], self)

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("a single FitResult has no len(); only batched results do")
        return self.batch_shape[0]

    # -- inference (mlefit/_inference.py; lazy, compiled, cached per result) ---------
    @property
    def param_names(self) -> list[str]:
        """Readable names of the scalar parameters (``"mu"``, ``"w[3]"``, ``"layer.bias[0]"``,
        ``"W[1,2]"``; ``"coef[age]"`` where a ready-made model's parameter is indexed by
        the columns of a DataFrame, see ``AbstractModel.param_labels``), in the order
        written in ``init`` (a dict's insertion order, not JAX's sorted order; for a
        ready-made model, the order of its ``init``): the rows of ``cov``, ``confint``,
        ``summary()`` and ``to_frame()``."""
        return param_names_of(self)

    def covariance(self, kind: str = "observed", groups=None):
        """Returns the ``(p, p)`` covariance of the scalar parameters (rows and columns:
        ``param_names``), a :class:`~mlefit.LabelledArray`: an array that also answers
        to names, ``cov["mu", "sigma"]``, and converts with ``.to_pandas()``.

        - ``"observed"``: inverse Hessian of the TOTAL NLL (observed Fisher information);
        - ``"opg"``: inverse of ``sum_i s_i s_i^T`` (outer product of per-observation scores);
        - ``"HC0"`` (alias ``"sandwich"``): ``H^-1 (sum_i s_i s_i^T) H^-1`` (robust);
        - ``"HC1"``: HC0 times ``n / (n - k)``;
        - ``"HC2"``, ``"HC3"``: scores weighted by ``1 / (1 - h_i)``, ``1 / (1 - h_i)^2``
          with leverages ``h_i`` (hat values for (generalised) linear models);
        - ``"cluster"``: ``G/(G-1) (n-1)/(n-k) H^-1 (sum_g S_g S_g^T) H^-1``, ``S_g`` the
          summed scores of cluster ``g`` (``groups``: one label per observation).

        Weights enter the scores as ``weights_kind`` says (:mod:`mlefit._weights`);
        definitions and peers (statsmodels, R's sandwich) in :mod:`mlefit._robust`.

        Taken in the unconstrained parametrisation and mapped to constrained parameters
        by the delta method, ``J cov_u J``, ``J = diag(dc/du)``. Rows and columns of a
        parameter that is not identified (Hessian not positive definite) or at a bound
        are NaN. Computed full-batch, in observation chunks, on first request; cached.

        Example:
            >>> res.covariance("cluster", groups=firm)  # doctest: +SKIP
        """
        _host_only(self, "covariance")
        return labelled_cov(self, kind, groups)

    @property
    def cov(self):
        """The observed-information covariance, ``covariance("observed")`` (labelled by
        ``param_names``)."""
        return self.covariance("observed")

    @property
    def stderr(self):
        """Standard errors ``sqrt(diag(cov))`` as a pytree like ``params`` (NaN where
        the Hessian gives none; see ``status``)."""
        _host_only(self, "stderr")
        return _unflatten(self, inference_of(self).stderr)

    @property
    def hessian(self):
        """Hessian of the total NLL at the estimate, unconstrained parametrisation, ``(p, p)``
        (rows and columns: ``param_names``, a :class:`~mlefit.LabelledArray`)."""
        _host_only(self, "hessian")
        return labelled_matrix(self, inference_of(self).hessian)

    @property
    def hessian_cond(self) -> jax.Array:
        """Condition number of ``hessian``: ``max|lambda| / min lambda`` (``inf`` if not PD)."""
        _host_only(self, "hessian_cond")
        return inference_of(self).condition_number

    @property
    def edm(self) -> jax.Array:
        """Estimated distance to the minimum of the total NLL, ``g^T H^-1 g / 2`` (Minuit's
        EDM): what a Newton step from the estimate would still gain. Near 0 at an optimum;
        large with a tiny gradient where the NLL is flat (status ``NOT_AT_MINIMUM``)."""
        _host_only(self, "edm")
        return inference_of(self).edm

    @property
    def n_params(self) -> int:
        """Number of free scalar parameters ``k`` (the size of ``u``)."""
        return n_params(self)

    @property
    def aic(self) -> jax.Array:
        """Akaike information criterion ``2 k - 2 loglik``."""
        return 2.0 * self.n_params - 2.0 * self.loglik

    @property
    def bic(self) -> jax.Array:
        """Bayesian information criterion ``k log(n_obs) - 2 loglik``."""
        xp = _xp(self.n_obs)
        return self.n_params * xp.log(xp.asarray(self.n_obs)) - 2.0 * self.loglik

    def confint(self, level: float = 0.95, method: str = "wald", params=None,
                kind: str = "observed", groups=None):
        """Returns confidence intervals ``(k, 2)``: one ``(lower, upper)`` row per parameter.

        The array is a :class:`~mlefit.LabelledArray`: rows named by parameter, columns
        ``("lower", "upper")``; ``ci[0, 1]`` as before, ``ci["sigma"]`` the row of
        ``sigma``, ``ci.to_pandas()`` a DataFrame.

        - ``"wald"``: ``estimate -/+ z_{(1+level)/2} * stderr`` (``kind`` picks the
          covariance); a batched result gives ``batch_shape + (k, 2)``.
        - ``"profile"``: ``{v : 2 (N_prof(v) - N_min) <= chi2_1(level)}`` with ``N_prof``
          the total NLL re-minimised over the other parameters (vmapped re-fits, then a
          root search). An end the profile never reaches is the parameter's bound (or
          +-inf), with a warning.

        Args:
            level: confidence level in (0, 1).
            method: ``"wald"`` or ``"profile"``.
            params: parameter names (``param_names``) to report; default all, in the
                order of ``param_names``.
            kind: covariance for Wald intervals (see ``covariance``).
            groups: cluster labels for ``kind="cluster"``.

        Example:
            >>> lo, hi = res.confint(0.95, method="profile", params=["sigma"])[0]  # doctest: +SKIP
        """
        _host_only(self, "confint")
        return confint_of(self, level, method, params, kind, groups)

    def to_frame(self, level: float = 0.95, kind: str = "observed", method: str = "wald"):
        """Returns the parameter table: one row per scalar parameter (``param_names``).

        Columns: ``estimate``, ``stderr`` (``sqrt(cov_jj)`` of the covariance ``kind``),
        ``z = estimate / stderr``, ``pvalue = 2 (1 - Phi(|z|))`` (the Wald test of
        ``parameter = 0``), ``ci_low``, ``ci_high`` (``confint(level, method)``).

        A ``pandas.DataFrame`` indexed by parameter name when pandas is installed; else a
        :class:`~mlefit.LabelledArray` ``(p, 6)`` with the same rows and columns
        (``t["mu", "stderr"]``, ``t[:, "pvalue"]``, ``t.to_dict()``). This is the way to a
        DataFrame of the estimate: ``pd.DataFrame(res.params)`` gives one column per
        dict entry of (possibly array) values, not a table of scalars.

        Example:
            >>> res.to_frame().loc["mu", "stderr"]  # doctest: +SKIP
        """
        _host_only(self, "to_frame")
        table = param_table(self, level, kind, method)
        return table.to_pandas() if optional_pandas() is not None else table

    def profile(self, name: str, values) -> np.ndarray:
        """Returns the profile total NLL ``min_{others} N(name = v)`` at each ``v`` in ``values``.

        ``2 * (res.profile(name, v) - (-res.loglik))`` is the likelihood-ratio statistic
        of ``name = v``. The re-fits are vmapped over ``values``.

        Example:
            >>> curve = res.profile("sigma", np.linspace(0.8, 1.2, 9))  # doctest: +SKIP
        """
        _host_only(self, "profile")
        return profile_of(self, name, values)

    def summary(self, kind: str = "observed", level: float = 0.95, max_rows: int = 50,
                groups=None) -> str:
        """Returns a text table of the fit: header (model, n_obs, log-likelihood, AIC, BIC,
        converged, status, steps, gradient norm, Hessian condition number) and per parameter
        estimate, std err, z, P>|z| and the Wald interval; notes say why a std err is NaN.
        ``kind`` (and ``groups``) pick the covariance, as in ``covariance``."""
        _host_only(self, "summary")
        return summary_of(self, kind, level, max_rows, groups)

    def predict(self, X, kind: str = "observed", groups=None):
        """Returns the model's predictions at the rows of ``X`` with delta-method errors.

        ``mean = model.predict(params, X)`` (conditional ready-made models: the mean of
        ``y``, class probabilities for classifiers) and
        ``se_i = sqrt(g_i^T C g_i)``, ``g_i = d mean_i / d params``, ``C`` the covariance
        of ``kind`` (and ``groups``). A :class:`~mlefit._predict.Prediction` with
        ``mean``, ``se`` and ``confint(level)``. See :func:`mlefit._predict.predict_of`.

        Example:
            >>> pred = res.predict(X_new)  # doctest: +SKIP
            >>> pred.mean, pred.se, pred.confint(0.95)  # doctest: +SKIP
        """
        _host_only(self, "predict")
        return predict_of(self, X, kind, groups)

    def gof(self, statistics=("ks", "cvm", "ad"), n_boot: int = 1000, *, key, **fit_options):
        """Returns KS, Cramer-von Mises and Anderson-Darling statistics with p-values by
        parametric bootstrap with refitting (:func:`mlefit._gof.gof`; ``key``: a PRNG key)."""
        _host_only(self, "gof")
        from ._gof import gof

        return gof(self, statistics, n_boot, key=key, **fit_options)

    def _repr_html_(self) -> str:
        _host_only(self, "_repr_html_")
        return html_of(self)

    # -- display -----------------------------------------------------------------
    def __repr__(self) -> str:
        if is_traced(self.nll, self.u, self.status_code):
            return f"FitResult(model={self.model_name}, traced)"
        if self.batch_shape:
            codes = np.asarray(refined_status_code(self)).ravel()  # res.status's verdicts
            counts = {str(Status(c)): int((codes == c).sum()) for c in np.unique(codes)}
            return (
                f"FitResult(model={self.model_name}, batch_shape={self.batch_shape}, "
                f"status_counts={counts})"
            )
        params = jax.tree.map(lambda x: np.asarray(x).round(8).tolist(), self.params)
        return (
            f"FitResult(model={self.model_name}, params={params}, nll={float(self.nll):.10g}, "
            f"n_obs={_num(self.n_obs)}, status={self.status}, steps={int(self.steps)}, "
            f"grad_norm={float(self.grad_norm):.3g})"
        )


def _host_only(res: FitResult, what: str) -> None:
    """``TypeError`` for a method that needs concrete values, called on a traced result."""
    if is_traced(res.nll, res.u, res.status_code):
        raise TypeError(
            f"FitResult.{what}: {NOT_AVAILABLE} (e.g. res = jax.jit(f)(x); res.{what}). "
            "Inside the transformation use res.params, res.nll, res.status_code, res.steps, "
            "res.grad_norm, res.loglik."
        )


def _xp(*xs):
    """NumPy for concrete values (no small programs to compile), ``jax.numpy`` for traced."""
    return jnp if any(isinstance(x, jax.core.Tracer) for x in xs) else np


def _as_status(code: np.ndarray):
    if code.ndim == 0:
        return Status(int(code))
    return np.vectorize(Status, otypes=[object])(code)


def _num(x):
    v = float(np.asarray(x))
    return int(v) if v.is_integer() else v
