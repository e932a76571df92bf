"""The result of a fit: an immutable pytree of values, with its outcome as data."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._model import Problem
from ._status import Status

__all__ = ["FitResult"]


class FitResult(eqx.Module):
    """The outcome of :func:`mlefit.fit`: estimate, objective, status and history.

    Conventions (stated once): the objective is the mean NLL
    ``nll = -(1/n) sum_i log p(obs_i; params)``; ``loglik = -n_obs * nll``.

    Attributes:
        params: the estimate, same structure as ``init`` (constrained values), or the
            fitted equinox Module.
        nll: mean negative log-likelihood at ``params``.
        n_obs: number of observations (sum of the weights when weights are given).
        status_code: integer code of :class:`Status` (``res.status`` gives the enum).
        steps: optimiser steps taken.
        grad_norm: max-norm of the gradient of the mean NLL (unconstrained
            parametrisation) at ``params``.
        history_buffer: mean NLL after each step (index 0: the start), NaN-padded;
            per epoch for minibatch fits. ``res.history`` trims it.
        u: the estimate in the unconstrained parametrisation the optimiser used.
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

    # -- outcome -----------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple:
        """Leading shape of a batched result (``()`` for a single fit)."""
        return tuple(jnp.shape(self.nll))

    @property
    def status(self):
        """The :class:`Status` of the fit (an array of them for a batched result)."""
        code = np.asarray(self.status_code)
        if code.ndim == 0:
            return Status(int(code))
        return np.vectorize(Status, otypes=[object])(code)

    @property
    def converged(self):
        """``True`` where the status is ``CONVERGED``."""
        return jnp.asarray(self.status_code) == Status.CONVERGED

    @property
    def loglik(self) -> jax.Array:
        """Total log-likelihood at the estimate, ``-n_obs * nll``."""
        return -self.n_obs * self.nll

    @property
    def history(self):
        """Mean NLL per step (index 0: the start), or per epoch for minibatch fits."""
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

    # -- display -----------------------------------------------------------------
    def __repr__(self) -> str:
        if self.batch_shape:
            codes = np.asarray(self.status_code).ravel()
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


def _num(x):
    v = float(np.asarray(x))
    return int(v) if v.is_integer() else v
