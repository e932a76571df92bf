"""Predictions of a fitted conditional model, with delta-method standard errors.

For a fit of ``p(y | x; w)`` with covariance ``C`` of the (flat, constrained) estimate:

    mean_i = m(x_i; w_hat)               (the model's ``predict``: E[y | x_i])
    se_i   = sqrt(g_i^T C g_i),  g_i = d m(x_i; w) / d w  at w_hat

(the delta method; ``C`` of any kind ``res.covariance`` offers, so robust errors of the
prediction come with ``kind="HC1"`` etc.). Wald intervals are symmetric on the model's
``prediction_scale`` and mapped back: for a GLM the scale of its linear predictor,
``expit(logit(m) -/+ z se / (m (1 - m)))`` for probabilities and
``exp(log(m) -/+ z se / m)`` for positive means, so they stay in range (statsmodels'
``get_prediction(...).conf_int()`` for a GLM).
"""

from __future__ import annotations

import dataclasses
import statistics

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._constraints import constrain
from ._data import _frame_names, _is_frame
from ._inference import inference_of
from ._model import unfixed
from .models._conditional import AbstractConditionalModel

__all__ = ["Prediction", "predict_of"]

_SCALES = ("identity", "log", "logit")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predictions with their delta-method standard errors (``res.predict(X)``).

    Attributes:
        mean: ``(n,)`` (or ``(n, K)`` class probabilities) predicted ``E[y | x]``.
        se: standard errors of ``mean``, same shape (NaN where the covariance gives none).
        scale: ``"identity"``, ``"log"`` or ``"logit"``: where ``confint`` is symmetric.
    """

    mean: np.ndarray
    se: np.ndarray
    scale: str = "identity"

    def confint(self, level: float = 0.95) -> np.ndarray:
        """Returns Wald intervals of the mean, ``mean.shape + (2,)`` (lower, upper).

        ``g^-1(g(m) -/+ z se_g)``, ``se_g = g'(m) se``, ``z = Phi^-1((1 + level) / 2)``,
        ``g`` the identity, ``log`` or ``logit`` (``scale``).

        Example:
            >>> p = Prediction(np.array([2.0]), np.array([0.5]))
            >>> p.confint(0.95).round(3).tolist()
            [[1.02, 2.98]]
        """
        if isinstance(level, bool) or not isinstance(level, (int, float, np.number)):
            raise TypeError(f"level: expected a number in (0, 1), got {type(level).__name__}")
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"level: must be strictly between 0 and 1 (e.g. 0.95), got {level!r}")
        z = statistics.NormalDist().inv_cdf((1.0 + float(level)) / 2.0)
        m, se = np.asarray(self.mean, float), np.asarray(self.se, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.scale == "log":
                g, d = np.log(m), z * se / m
                lo, hi = np.exp(g - d), np.exp(g + d)
            elif self.scale == "logit":
                g, d = np.log(m) - np.log1p(-m), z * se / (m * (1.0 - m))
                lo, hi = _expit(g - d), _expit(g + d)
            else:
                lo, hi = m - z * se, m + z * se
        return np.stack([lo, hi], axis=-1)


def _expit(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


@eqx.filter_jit
def _mean_se(model, problem, transforms, u, X, cov):
    c_flat, unravel = ravel_pytree(constrain(u, transforms))

    def mean(cf):
        return model.predict(problem.finalize(unravel(cf)), X)

    m = mean(c_flat)
    jac = (jax.jacfwd if c_flat.size <= m.size else jax.jacrev)(mean)(c_flat)
    # Parameters without a covariance (NaN rows) make NaN only the predictions that
    # depend on them.
    missing = jnp.isnan(jnp.diag(cov))
    cz = jnp.where(jnp.isnan(cov), 0.0, cov)
    var = jnp.einsum("...i,ij,...j->...", jac, cz, jac)
    touched = jnp.any((jac != 0) & missing, axis=-1)
    return m, jnp.where(touched, jnp.nan, jnp.sqrt(jnp.maximum(var, 0.0)))


def predict_of(res, X, kind: str = "observed", groups=None) -> Prediction:
    """``res.predict(X)``: the model's ``predict(params, X)`` with delta-method errors.

    A DataFrame ``X`` is matched to a DataFrame fit by column name. Parameters held
    fixed (``fixed=``, ``model.fix``) enter with their values and a standard error of 0.
    ``TypeError`` for a batched result or a model without ``predict`` (unconditional
    models, plain functions); ``ValueError`` naming ``X`` for a design of the wrong shape
    or a missing column.
    """
    if res.batch_shape:
        raise TypeError("predict: works on a single fit; index the batched result first (res[i])")
    model = unfixed(res.problem.source)  # res.params hold any fixed values too
    if not isinstance(model, AbstractConditionalModel):
        raise TypeError(_no_predict_message(res))
    if model.prediction_scale not in _SCALES:
        raise ValueError(
            f"{model.name}.prediction_scale: expected one of {_SCALES}, got "
            f"{model.prediction_scale!r}"
        )
    X = _columns_by_name(res, X)
    design = model.design(res.params, X)  # checked on the host, before compiling
    cov = inference_of(res, kind, groups).cov
    m, se = _mean_se(model, res.problem, res.transforms, res.u, design, cov)
    return Prediction(np.asarray(m), np.asarray(se), model.prediction_scale)


def _columns_by_name(res, X):
    """``X``'s columns in the order of the fit's, where both are named (dataframes).

    A fit of a DataFrame design names ``coef`` by its columns; a DataFrame passed to
    ``predict`` is matched by those names (its other columns, ``y`` say, are ignored),
    so a different column order cannot silently give other predictions. A missing column
    is a ``ValueError`` naming it. Unnamed designs (arrays) are taken by position.
    """
    columns = res.problem.columns
    fitted = columns[0] if columns else None
    if fitted is None or not _is_frame(X):
        return X
    names = _frame_names(X)
    missing = [c for c in fitted if c not in names]
    if missing:
        raise ValueError(
            f"X: column(s) {missing} missing; {res.model_name} was fitted with columns "
            f"{list(fitted)}, X has {names}. Pass a DataFrame with those columns (by name, "
            "any order) or an array of shape (n, d) with them in the fit's order."
        )
    idx = [names.index(c) for c in fitted]
    if idx == list(range(len(names))):
        return X
    if hasattr(X, "iloc"):
        return X.iloc[:, idx]
    labels = list(X.column_names if hasattr(X, "column_names") else X.columns)
    return X[[labels[i] for i in idx]]


def _no_predict_message(res) -> str:
    model = res.problem.source
    what = (
        f"{res.model_name} is an unconditional model of the data (log p(x)): there are no "
        "covariates to predict from; its fitted distribution is res.params"
        if model is not None
        else f"the model {res.model_name!r} is a user function or Module without predict"
    )
    return (
        f"predict: {what}. Predictions need a conditional model p(y | x) with "
        "predict(params, X): LinearGaussian, Logistic, PoissonRegression, Softmax, "
        "MLPClassifier, or a subclass of mlefit.models.AbstractConditionalModel."
    )
