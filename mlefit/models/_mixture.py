"""Finite mixtures of ready-made models: no closed form, fitted by the same engine."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._model import AbstractModel, data_arguments
from ._base import data_driven_start, host, sample_shape
from ._discrete import with_reference

__all__ = ["Mixture"]


class Mixture(AbstractModel):
    """Finite mixture ``p(x) = sum_k w_k p_k(x; theta_k)`` of unconditional models.

    Params ``{"logits": (K - 1,) real, "components": (theta_0, ..., theta_{K-1})}``: the
    weights ``w = softmax([0, logits])`` lie on the simplex for any logits (component 0
    is the reference); ``theta_k`` are the parameters of component ``k`` in its own form.

    ``log p(x) = logsumexp_k (log w_k + log p_k(x; theta_k))``.

    Start: the observations are sorted (by their projection on the leading principal
    axis for vector data) and cut into ``K`` equal-count groups; component ``k`` starts
    from its own ``init`` on group ``k``, the weights start equal. Distinct groups keep
    the components apart, which gradient fitting needs (identical components stay
    identical). The MLE is unique only up to relabelling of the components.
    :meth:`weights` gives ``w``.

    Args:
        components: a sequence of ``K >= 2`` unconditional models (static), e.g.
            ``Mixture([Normal(), Normal()])``.

    Example:
        >>> import numpy as np, mlefit
        >>> from mlefit.models import Mixture, Normal
        >>> x = np.concatenate([np.linspace(-6, -4, 50), np.linspace(4, 6, 50)])
        >>> res = mlefit.fit(Mixture([Normal(), Normal()]), x)
        >>> [round(float(p["loc"]), 2) for p in res.params["components"]]
        [-5.0, 5.0]
    """

    components: tuple = eqx.field(static=True)

    def __init__(self, components: Sequence[AbstractModel]):
        comps = tuple(components)
        if len(comps) < 2:
            raise ValueError(f"Mixture: needs at least 2 components, got {len(comps)}.")
        for i, c in enumerate(comps):
            if not isinstance(c, AbstractModel):
                raise TypeError(
                    f"Mixture: components[{i}] must be an mlefit model (e.g. "
                    f"mlefit.models.Normal()), got {type(c).__name__}."
                )
            arity = data_arguments(c)
            if arity is not None and arity[0] != 1:
                raise TypeError(
                    f"Mixture: components[{i}] is {c.name}, whose log-density takes "
                    f"({', '.join(arity[1])}); a Mixture mixes densities of one data array "
                    "(e.g. Normal, Poisson). For a mixture of regressions or of censored "
                    "models, write its log-density as a function of (params, *obs)."
                )
        self.components = comps

    @property
    def name(self) -> str:
        return f"Mixture({', '.join(c.name for c in self.components)})"

    @staticmethod
    def weights(params) -> jax.Array:
        """The mixture weights ``w = softmax([0, logits])``."""
        return jax.nn.softmax(with_reference(params["logits"]), axis=-1)

    def log_prob(self, params, x):
        log_w = jax.nn.log_softmax(with_reference(params["logits"]), axis=-1)
        lp = jnp.stack(
            [c.log_prob(p, x) for c, p in zip(self.components, params["components"], strict=True)]
        )
        return jax.scipy.special.logsumexp(log_w + lp)

    def check_data(self, x) -> None:
        for c in self.components:
            c.check_data(x)

    @data_driven_start
    def init(self, x):
        a = host(x)
        k = len(self.components)
        if a.shape[0] < 2 * k:
            raise ValueError(
                f"{self.name}: needs at least 2 observations per component to start "
                f"({2 * k}), got {a.shape[0]}."
            )
        flat = a.reshape(a.shape[0], -1).astype(np.float64)
        if flat.shape[1] == 1:
            key = flat[:, 0]
        else:
            centred = flat - flat.mean(axis=0)
            key = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        groups = np.array_split(a[np.argsort(key, kind="stable")], k)
        comps = tuple(c.init(g) for c, g in zip(self.components, groups, strict=True))
        return {"logits": np.zeros(k - 1), "components": comps}

    def sample(self, key, params, n):
        """``n`` draws: a component label from ``w``, then a draw from that component."""
        shape = sample_shape(n)
        keys = jax.random.split(key, len(self.components) + 1)
        label = jax.random.categorical(keys[0], with_reference(params["logits"]), shape=shape)
        draws = [
            c.sample(kk, p, shape)
            for c, p, kk in zip(self.components, params["components"], keys[1:], strict=True)
        ]
        out = draws[0]
        for j, d in enumerate(draws[1:], start=1):
            mask = (label == j).reshape(label.shape + (1,) * (d.ndim - label.ndim))
            out = jnp.where(mask, d, out)
        return out
