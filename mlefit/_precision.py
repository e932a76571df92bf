"""Precision guard: a fit in float32 says once what it costs."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["warn_if_float32"]

_WARNED = {"float32": False}


def warn_if_float32(dtype) -> None:
    """Warns once per process (``UserWarning``) when a fit runs in float32 (or narrower).

    float32 carries about 7 significant digits (``eps = 1.2e-7``): the mean NLL of 1e5
    observations is resolved to about 1e-7 relative, so intervals and standard errors
    can be off in their 3rd-4th digit. The warning names the switch to float64.
    """
    if _WARNED["float32"] or np.dtype(dtype).itemsize >= 8:
        return
    _WARNED["float32"] = True
    warnings.warn(
        f"mlefit: this fit runs in {np.dtype(dtype).name}, so its results carry about 7 "
        "significant digits (standard errors and intervals from a Hessian of a sum over "
        "many observations can be off in the 3rd digit). For float64, run "
        'jax.config.update("jax_enable_x64", True) before creating arrays (and pass '
        "float64 data). This warning is shown once per process.",
        UserWarning,
        stacklevel=3,
    )
