"""Conditional models ``p(y | x; w)``: data are ``(X, y)`` with ``X`` of shape ``(n, d)``.

The linear predictor is ``eta = intercept + x @ coef`` (``intercept=False`` drops the
intercept, e.g. when ``X`` already has a constant column). A neural network is just
another ``p(y | x; w)``: :class:`MLPClassifier` is fitted by the same engine.

Sampling: ``sample(key, params, n=None, X=None)`` draws ``y`` given the design ``X``
(required: the models describe ``y`` only) and returns ``(X, y)``, the layout ``fit``
takes; ``n``, if given, must equal ``len(X)``.

Prediction: ``predict(params, X)`` gives ``E[y | x]`` for each row of ``X`` (class
probabilities for the classifiers); ``res.predict(X)`` adds delta-method standard errors.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np

from .._constraints import Positive
from .._model import AbstractModel
from ..closed_form import least_squares
from ._base import (
    array_namespace,
    as_float,
    check_binary,
    check_design,
    check_integers,
    check_labels,
    checked,
    data_driven_start,
)
from ._discrete import (
    bernoulli_log_prob,
    categorical_log_prob,
    class_frequencies,
    clipped_mean,
    with_reference,
)

__all__ = [
    "AbstractConditionalModel",
    "LinearGaussian",
    "Logistic",
    "Softmax",
    "PoissonRegression",
    "MLPClassifier",
]


def _eta(params, x):
    eta = x @ params["coef"]
    return eta + params["intercept"] if "intercept" in params else eta


def _sample_design(model: str, n, X):
    if X is None:
        raise ValueError(
            f"{model}.sample: pass the design X (shape (n, d)); a conditional model draws "
            "y given X."
        )
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{model}.sample: X must be 2-D (n, d), got shape {X.shape}.")
    if n is not None and int(n) != X.shape[0]:
        raise ValueError(f"{model}.sample: n={n} but X has {X.shape[0]} rows; give one of them.")
    return X


class AbstractConditionalModel(AbstractModel):
    """A model ``p(y | x; w)`` of a response given a design row ``x``, with ``predict``.

    The log-density is that of one observation, ``log p(y | x; params)``, as for every
    mlefit model; subclasses add the prediction ``E[y | x]``.

    Subclasses implement ``predict(params, X)``: ``E[y | x]`` for each row of ``X``
    (``(n,)``; ``(n, K)`` class probabilities for classifiers), through
    :meth:`design`, which checks ``X``. Class attributes:

    - ``prediction_scale``: the scale on which Wald intervals of predictions are
      symmetric, ``"identity"``, ``"log"`` (positive means) or ``"logit"``
      (probabilities): for a GLM the scale of its linear predictor.
    - ``nuisance_params``: top-level parameter names that do not enter the mean (a
      dispersion, e.g. ``("scale",)``); left out of the leverages of the HC2/HC3
      covariances and of ``k`` in the HC1 and cluster corrections.
    """

    prediction_scale: ClassVar[str] = "identity"
    nuisance_params: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def predict(self, params, X) -> jax.Array:
        raise NotImplementedError

    def n_features(self, params) -> int:
        """``d``, the number of columns of ``X`` the model takes (``coef``'s rows)."""
        return int(jnp.shape(params["coef"])[0])

    def design(self, params, X) -> jax.Array:
        """``X`` as a float array of shape ``(n, d)``; ``ValueError`` naming ``X`` otherwise.

        Accepts anything ``np.asarray`` takes (a pandas DataFrame of numbers included).
        """
        d = self.n_features(params)
        if not isinstance(X, jax.Array):
            X = np.asarray(X)
            if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
                raise ValueError(
                    f"X: expected a numeric array of shape (n, {d}), got dtype {X.dtype}."
                )
        if X.ndim != 2 or X.shape[1] != d:
            hint = " (one row: X.reshape(1, -1))" if X.ndim == 1 and X.shape[0] == d else ""
            raise ValueError(
                f"X: expected shape (n, {d}) ({self.name} was fitted with {d} column(s)), "
                f"got shape {tuple(X.shape)}{hint}."
            )
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params), float)
        return jnp.asarray(X, dtype=dtype)


def _coef_labels(X_columns, trailing_axes: int = 0) -> dict:
    """``coef[age]``: the rows of ``coef`` are named by the columns of ``X`` (when named)."""
    if X_columns is None:
        return {}
    return {"coef": (tuple(X_columns),) + (None,) * trailing_axes}


def _start(xp, intercept: bool, d: int, b0, coef_shape=None) -> dict:
    coef = xp.zeros(coef_shape if coef_shape is not None else (d,))
    return {"intercept": b0, "coef": coef} if intercept else {"coef": coef}


class LinearGaussian(AbstractConditionalModel):
    """Linear regression with Gaussian noise, ``y | x ~ N(intercept + x @ coef, scale^2)``.

    Params ``{"intercept": real, "coef": (d,) real, "scale": > 0}`` (no ``intercept``
    with ``intercept=False``). ``log p(y | x) = log N(y; eta, scale^2)``: its mean NLL is
    ``MSE / (2 scale^2) + log(2 pi scale^2) / 2``, so the MLE of the coefficients is
    ordinary least squares and ``scale^2 = RSS / n``. Start: that closed form
    (least squares on the host), so the fit confirms it.

    ``predict(params, X) = intercept + X @ coef``. The ``scale`` is a nuisance
    parameter of the robust covariances (``nuisance_params``).

    Args:
        intercept: fit an intercept (static, default ``True``).
    """

    intercept: bool = eqx.field(static=True, default=True)
    nuisance_params: ClassVar[tuple[str, ...]] = ("scale",)

    def log_prob(self, params, x, y):
        return jstats.norm.logpdf(y, _eta(params, x), params["scale"])

    def predict(self, params, X) -> jax.Array:
        """``E[y | x] = intercept + x @ coef`` for each row of ``X``: ``(n,)``."""
        return _eta(params, self.design(params, X))

    def check_data(self, X, y) -> None:
        check_design(self.name, X)
        if np.ndim(y) != 1:
            raise ValueError(
                f"{self.name}: y must be 1-D (one response per row), got shape {np.shape(y)}."
            )

    def param_labels(self, X_columns=None, y_columns=None) -> dict:
        """``coef`` entries named by the columns of ``X``."""
        return _coef_labels(X_columns, 0)

    @data_driven_start
    def init(self, X, y):
        xp = array_namespace(X, y)
        X, y = as_float(xp, X), as_float(xp, y)
        A = xp.concatenate([xp.ones((len(X), 1)), X], axis=1) if self.intercept else X
        beta = least_squares(A, y)
        rss = xp.sum((y - A @ beta) ** 2)
        what = "the fit is exact (zero residuals): the MLE scale is 0"
        scale = checked(xp, self.name, rss > 0, xp.sqrt(rss / len(y)), what)
        params = {"intercept": beta[0]} if self.intercept else {}
        params["coef"] = beta[1:] if self.intercept else beta
        params["scale"] = Positive(scale)
        return params

    def sample(self, key, params, n=None, X=None):
        """``(X, y)`` with ``y = eta + scale * z``, ``z ~ N(0, 1)``."""
        X = _sample_design(self.name, n, X)
        eta = _eta(params, X)
        return X, eta + params["scale"] * jax.random.normal(key, eta.shape, eta.dtype)


class Logistic(AbstractConditionalModel):
    """Logistic regression, ``P(y = 1 | x) = sigmoid(intercept + x @ coef)``, ``y`` in {0, 1}.

    Params ``{"intercept": real, "coef": (d,) real}``.
    ``log p(y | x) = y log sigmoid(eta) + (1 - y) log sigmoid(-eta) = y eta - softplus(eta)``
    (the binary cross-entropy in its canonical form, stable for any ``eta``). Start:
    ``coef = 0`` and the intercept of the intercept-only MLE, ``log(m / (1 - m))``.
    Separable data have no finite MLE: the fit stops where the gradient falls below
    ``tol``, with large coefficients (``|eta|`` around 20).

    Args:
        intercept: fit an intercept (static, default ``True``).
    """

    intercept: bool = eqx.field(static=True, default=True)
    prediction_scale: ClassVar[str] = "logit"

    def log_prob(self, params, x, y):
        return bernoulli_log_prob(_eta(params, x), y)

    def predict(self, params, X) -> jax.Array:
        """``P(y = 1 | x) = sigmoid(intercept + x @ coef)`` for each row of ``X``: ``(n,)``."""
        return jax.nn.sigmoid(_eta(params, self.design(params, X)))

    label_data = 1  # labels: fit_many checks each data set for unobserved classes

    def check_data(self, X, y) -> None:
        check_design(self.name, X)
        check_binary(self.name, y)

    def param_labels(self, X_columns=None, y_columns=None) -> dict:
        """``coef`` entries named by the columns of ``X``."""
        return _coef_labels(X_columns, 0)

    @data_driven_start
    def init(self, X, y):
        xp = array_namespace(X, y)
        m = clipped_mean(xp, as_float(xp, y))
        return _start(xp, self.intercept, np.shape(X)[1], xp.log(m / (1 - m)))

    def sample(self, key, params, n=None, X=None):
        """``(X, y)`` with ``y ~ Bernoulli(sigmoid(eta))`` (integers)."""
        X = _sample_design(self.name, n, X)
        eta = _eta(params, X)
        return X, jax.random.bernoulli(key, jax.nn.sigmoid(eta)).astype(int)


class Softmax(AbstractConditionalModel):
    """Multinomial (softmax) regression of labels ``0 .. num_classes - 1``.

    Params ``{"intercept": (K - 1,), "coef": (d, K - 1)}``: class 0 is the reference
    (its logit is 0), as in ``statsmodels`` ``MNLogit``, so the MLE is unique.
    ``log p(y | x) = log_softmax([0, intercept + x @ coef])[y]`` (the categorical
    cross-entropy, via optax). Start: ``coef = 0`` and the intercept-only MLE
    ``intercept[k - 1] = log(f_k / f_0)`` (class frequencies ``f``).

    Args:
        num_classes: ``K >= 2`` (static).
        intercept: fit intercepts (static, default ``True``).
    """

    num_classes: int = eqx.field(static=True)
    intercept: bool = eqx.field(static=True, default=True)
    prediction_scale: ClassVar[str] = "logit"

    def __check_init__(self):
        if not (isinstance(self.num_classes, (int, np.integer)) and self.num_classes >= 2):
            raise ValueError(f"Softmax: num_classes must be an int >= 2, got {self.num_classes!r}")

    def logits(self, params, X) -> jax.Array:
        """The ``K`` class logits ``[0, intercept + x @ coef]`` for each row of ``X``."""
        return with_reference(_eta(params, X))

    def log_prob(self, params, x, y):
        return categorical_log_prob(self.logits(params, x), y)

    def predict(self, params, X) -> jax.Array:
        """Class probabilities ``softmax([0, intercept + x @ coef])`` per row: ``(n, K)``."""
        return jax.nn.softmax(self.logits(params, self.design(params, X)), axis=-1)

    label_data = 1  # labels: fit_many checks each data set for unobserved classes

    def check_data(self, X, y) -> None:
        check_design(self.name, X)
        check_labels(self.name, y, self.num_classes, arg="y")

    def param_labels(self, X_columns=None, y_columns=None) -> dict:
        """``coef`` entries named by the columns of ``X`` (the class axis by position)."""
        return _coef_labels(X_columns, 1)

    @data_driven_start
    def init(self, X, y):
        xp = array_namespace(X, y)
        f = class_frequencies(xp, xp.asarray(y), self.num_classes)
        d = np.shape(X)[1]
        return _start(
            xp, self.intercept, d, xp.log(f[1:]) - xp.log(f[0]),
            coef_shape=(d, self.num_classes - 1),
        )

    def sample(self, key, params, n=None, X=None):
        """``(X, y)`` with ``y ~ Categorical(softmax(logits))``."""
        X = _sample_design(self.name, n, X)
        return X, jax.random.categorical(key, self.logits(params, X), axis=-1)


class PoissonRegression(AbstractConditionalModel):
    """Poisson regression with log link, ``y | x ~ Poisson(exp(intercept + x @ coef))``.

    Params ``{"intercept": real, "coef": (d,) real}``.
    ``log p(y | x) = y eta - exp(eta) - lgamma(y + 1)``: ``jax.scipy.stats.poisson``'s
    log-pmf written in the log rate ``eta`` (no ``log(exp(eta))`` per observation: cheaper,
    and finite where ``exp(eta)`` underflows). Start: ``coef = 0`` and the intercept-only
    MLE ``log(mean y)``.

    Args:
        intercept: fit an intercept (static, default ``True``).
    """

    intercept: bool = eqx.field(static=True, default=True)
    prediction_scale: ClassVar[str] = "log"

    def log_prob(self, params, x, y):
        eta = _eta(params, x)
        return y * eta - jnp.exp(eta) - jax.scipy.special.gammaln(y + 1.0)

    def predict(self, params, X) -> jax.Array:
        """``E[y | x] = exp(intercept + x @ coef)`` for each row of ``X``: ``(n,)``."""
        return jnp.exp(_eta(params, self.design(params, X)))

    def check_data(self, X, y) -> None:
        check_design(self.name, X)
        check_integers(self.name, y, arg="y")

    def param_labels(self, X_columns=None, y_columns=None) -> dict:
        """``coef`` entries named by the columns of ``X``."""
        return _coef_labels(X_columns, 0)

    @data_driven_start
    def init(self, X, y):
        xp = array_namespace(X, y)
        yy = as_float(xp, y)
        b0 = xp.log(xp.maximum(yy.mean(), 0.5 / len(yy)))
        return _start(xp, self.intercept, np.shape(X)[1], b0)

    def sample(self, key, params, n=None, X=None):
        """``(X, y)`` with ``y ~ Poisson(exp(eta))``."""
        X = _sample_design(self.name, n, X)
        return X, jax.random.poisson(key, jnp.exp(_eta(params, X)))


def _key_data(key) -> tuple:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    if not isinstance(key, jax.Array):
        raise TypeError(f"MLPClassifier: key must be an int seed or a PRNG key, got {key!r}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel())


class MLPClassifier(AbstractConditionalModel):
    """A neural classifier ``p(y | x; w) = softmax(mlp(x; w))[y]`` with an ``eqx.nn.MLP``.

    ``log p(y | x) = log_softmax(mlp(x))[y]``: the categorical cross-entropy, so the
    MLE is what "training a classifier" means. Params: the floating-point arrays of an
    ``eqx.nn.MLP(in_size, num_classes, width_size, depth, activation)`` (the MLP with
    ``None`` in place of its non-array fields); :meth:`network` turns a fitted
    ``res.params`` into a callable MLP and :meth:`predict_proba` gives class probabilities.
    No constraints. Start: equinox's default initialisation from ``key`` (default
    ``jax.random.key(0)``), independent of the data. The logits are over-parametrised
    and separable data have no finite MLE: give ``max_steps`` and judge the fit by its NLL.

    Args:
        in_size: number of input features ``d`` (static).
        num_classes: ``K >= 2`` (static).
        width_size: hidden width (default 32).
        depth: number of hidden layers (default 1).
        activation: hidden activation (default ``jax.nn.tanh``: smooth, so the Newton
            polish of the fit sees a useful Hessian).
        key: an int seed or a PRNG key for the initial weights (default 0).
    """

    in_size: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    width_size: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    key_data: tuple = eqx.field(static=True)
    prediction_scale: ClassVar[str] = "logit"

    def __init__(
        self,
        in_size: int,
        num_classes: int,
        width_size: int = 32,
        depth: int = 1,
        activation: Callable = jax.nn.tanh,
        key=0,
    ):
        for name, v, low in (
            ("in_size", in_size, 1),
            ("num_classes", num_classes, 2),
            ("width_size", width_size, 1),
            ("depth", depth, 0),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"MLPClassifier: {name} must be an int >= {low}, got {v!r}")
        self.in_size, self.num_classes = int(in_size), int(num_classes)
        self.width_size, self.depth = int(width_size), int(depth)
        self.activation = activation
        self.key_data = _key_data(key)

    def _build(self, key) -> eqx.nn.MLP:
        return eqx.nn.MLP(
            self.in_size,
            self.num_classes,
            self.width_size,
            self.depth,
            activation=self.activation,
            key=key,
        )

    def _key(self):
        return jax.random.wrap_key_data(jnp.asarray(self.key_data, jnp.uint32))

    def _skeleton(self):
        shapes = eqx.filter_eval_shape(self._build, self._key())
        return eqx.partition(shapes, lambda v: isinstance(v, jax.ShapeDtypeStruct))[1]

    def network(self, params) -> eqx.nn.MLP:
        """The callable ``eqx.nn.MLP`` with the weights in ``params``."""
        return eqx.combine(params, self._skeleton())

    def predict_proba(self, params, X) -> jax.Array:
        """Class probabilities ``softmax(mlp(x))`` for each row of ``X``: ``(n, K)``."""
        return jax.nn.softmax(jax.vmap(self.network(params))(jnp.asarray(X)), axis=-1)

    def predict(self, params, X) -> jax.Array:
        """Class probabilities ``softmax(mlp(x))`` for each row of ``X``: ``(n, K)``."""
        return self.predict_proba(params, self.design(params, X))

    def n_features(self, params) -> int:
        """``in_size``."""
        return self.in_size

    def log_prob(self, params, x, y):
        return categorical_log_prob(self.network(params)(x), y)

    label_data = 1  # labels: fit_many checks each data set for unobserved classes

    def check_data(self, X, y) -> None:
        a = check_design(self.name, X)
        if a is not None and a.shape[1] != self.in_size:
            raise ValueError(f"{self.name}: X has {a.shape[1]} columns but in_size={self.in_size}.")
        check_labels(self.name, y, self.num_classes, arg="y")

    @data_driven_start
    def init(self, X, y):
        return eqx.filter(self._build(self._key()), eqx.is_inexact_array)

    def sample(self, key, params, n=None, X=None):
        """``(X, y)`` with ``y ~ Categorical(softmax(mlp(x)))``."""
        X = _sample_design(self.name, n, X)
        logits = jax.vmap(self.network(params))(X)
        return X, jax.random.categorical(key, logits, axis=-1)
