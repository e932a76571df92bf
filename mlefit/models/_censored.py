"""Censored observations: exact values contribute the density, censored ones a probability."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._model import AbstractModel
from ._base import data_driven_start, host, raise_first_bad, require_ndim, sample_shape

__all__ = ["Censored"]

EXACT, RIGHT, LEFT = 0, 1, -1


class Censored(AbstractModel):
    """A scalar model observed with left/right censoring; data are ``(x, censor)``.

    ``censor[i]`` says what ``x[i]`` is: ``0`` the exact value, ``1`` right-censored
    (the true value is above ``x[i]``, e.g. a patient still alive at the end of the
    study), ``-1`` left-censored (the true value is below ``x[i]``, e.g. under a detection
    limit). Parameters are those of the wrapped model.

    ``log p(x, c) = log f(x)`` for ``c = 0``, ``log S(x) = log P(X > x)`` (``log_sf``) for
    ``c = 1``, ``log F(x) = log P(X <= x)`` (``log_cdf``) for ``c = -1``.

    For a right-censored exponential the MLE is ``rate = (number of events) / (total
    time)``. Start: the wrapped model's ``init`` on ``x`` as if all were exact. The
    wrapped model needs ``log_cdf`` and ``log_sf`` (Normal, LogNormal, Exponential, Weibull,
    Laplace; not StudentT, Beta or Gamma, whose CDFs JAX cannot differentiate twice in
    their parameters).

    Args:
        model: the distribution of the uncensored values (static).

    Example:
        >>> import numpy as np, mlefit
        >>> from mlefit.models import Censored, Exponential
        >>> x, c = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1])
        >>> res = mlefit.fit(Censored(Exponential()), (x, c))
        >>> round(float(res.params["rate"]), 6)  # 2 events / 10 time units
        0.2
    """

    model: AbstractModel = eqx.field(static=True)

    def __check_init__(self):
        m = self.model
        if not isinstance(m, AbstractModel):
            raise TypeError(f"Censored: model must be an mlefit model, got {type(m).__name__}.")
        missing = [f for f in ("log_cdf", "log_sf", "_interior_point") if not hasattr(m, f)]
        if missing:
            raise TypeError(
                f"Censored: {m.name} has no {' / '.join(missing)}, so censored observations "
                "cannot be scored; use a model with a twice-differentiable CDF (Normal, "
                "LogNormal, Exponential, Weibull, Laplace)."
            )

    @property
    def name(self) -> str:
        return f"Censored({self.model.name})"

    def log_prob(self, params, x, censor):
        # Each branch is evaluated at x only where it is selected and at an interior point
        # elsewhere, so an unselected -inf (e.g. log F(0)) cannot put NaN into the gradient.
        safe = jax.lax.stop_gradient(self.model._interior_point(params))
        at = lambda code: jnp.where(censor == code, x, safe)  # noqa: E731
        exact = self.model.log_prob(params, at(EXACT))
        right = self.model.log_sf(params, at(RIGHT))
        left = self.model.log_cdf(params, at(LEFT))
        return jnp.where(censor == EXACT, exact, jnp.where(censor == RIGHT, right, left))

    def check_data(self, x, censor) -> None:
        try:
            self.model.check_data(x)
        except ValueError as e:  # the wrapped model calls its one array "data"
            prefix = f"{self.model.name}: data"
            raise ValueError(str(e).replace(prefix, f"{self.name}: x", 1)) from None
        c = host(censor)
        if c is None:
            return
        require_ndim(self.name, "censor", c, 1, "one code per observation")
        bad = (c != EXACT) & (c != RIGHT) & (c != LEFT)
        raise_first_bad(
            self.name, "censor", c, bad, "0 (exact), 1 (right-censored) or -1 (left-censored)"
        )

    @data_driven_start
    def init(self, x, censor):
        return self.model.init(x)

    def sample(self, key, params, n, censor_at=None):
        """``(x, censor)``: ``n`` draws of the model, right-censored at ``censor_at``.

        With ``censor_at`` (a scalar or an array broadcastable to the draws, e.g. each
        subject's follow-up time) ``x = min(t, censor_at)`` and ``censor = 1`` where
        ``t > censor_at``; without it all draws are exact (``censor = 0``).
        """
        t = self.model.sample(key, params, n)
        if censor_at is None:
            return t, jnp.zeros(sample_shape(n), int)
        cens = t > censor_at
        return jnp.where(cens, censor_at, t), cens.astype(int)
