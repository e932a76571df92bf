"""The options of a fit, checked at the boundary (before anything compiles)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._defaults import DEFAULT_MAX_STEPS, default_tol
from ._newton import NEWTON
from ._solver_optax import LBFGS, default_optimizer, lbfgs_optimizer
from ._solver_subsampled import SUBSAMPLED, SubsampledNewton

__all__ = ["FitOptions", "check_options", "check_named_optimizer"]


class FitOptions(NamedTuple):
    """Validated, normalised options of a fit (shared by ``fit`` and batched fits)."""

    optimizer: Any
    batch_size: int | None
    epochs: int | None
    key: Any
    max_steps: int
    tol: float
    history: bool


def check_options(n, dtype, optimizer, batch_size, epochs, key, max_steps, tol, history):
    if optimizer is None:
        optimizer = default_optimizer()
    elif optimizer == SUBSAMPLED:
        optimizer = SubsampledNewton()
    elif optimizer == LBFGS:
        optimizer = lbfgs_optimizer()
    elif not isinstance(optimizer, (optax.GradientTransformation, SubsampledNewton)):
        raise TypeError(
            f"optimizer: expected an optax GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {type(optimizer).__name__}"
        )
    if batch_size is None:
        if epochs is not None:
            raise ValueError(
                "epochs: only minibatch fits count epochs; give batch_size too, or use "
                "max_steps for a full-batch fit."
            )
    else:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size: expected an int, got {type(batch_size).__name__}")
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size: must be between 1 and n_obs={n}, got {batch_size}")
        epochs = 10 if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs: must be a positive int, got {epochs!r}")
        if key is None:
            key = jax.random.key(0)
        elif not (
            isinstance(key, jax.Array)
            and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,))
        ):
            raise TypeError("key: expected a PRNG key such as jax.random.key(0)")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps: must be a non-negative int, got {max_steps!r}")
    if tol is None:
        tol = default_tol(dtype)
    if not (np.isscalar(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: must be a finite number >= 0, got {tol!r}")
    return FitOptions(
        optimizer,
        batch_size and int(batch_size),
        epochs and int(epochs),
        key,
        int(max_steps),
        float(tol),
        bool(history),
    )


def check_named_optimizer(optimizer, batch_size, stream: bool) -> bool:
    """Whether ``optimizer`` is ``"newton"``; ``ValueError`` for a name that is not
    ``"newton"``, ``"subsampled"`` or ``"lbfgs"``, and for what the first two cannot be
    combined with."""
    if isinstance(optimizer, SubsampledNewton):
        optimizer = SUBSAMPLED
    if not isinstance(optimizer, str):
        return False
    if optimizer not in (NEWTON, SUBSAMPLED, LBFGS):
        raise ValueError(
            f"optimizer: the named optimizers are 'newton', 'subsampled' and 'lbfgs', got "
            f"{optimizer!r}; otherwise pass an optax GradientTransformation "
            "(e.g. optax.adam(1e-2))."
        )
    if optimizer == LBFGS:
        return False
    for given, what in (
        (batch_size is not None, "batch_size (minibatch fits)"),
        (stream, "a data stream"),
    ):
        if given:
            raise ValueError(
                f"optimizer: {optimizer!r} is a full-batch method on data in memory (an exact "
                f"Hessian) and does not combine with {what}; use the default "
                "L-BFGS or an optax optimiser instead."
            )
    return optimizer == NEWTON

