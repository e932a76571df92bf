"""Known nested pairs of ready-made models, shared by ``lr_test`` and the CLI's compare.

A restriction on the boundary of the parameter space (a variance component at 0, a
degrees-of-freedom parameter at infinity) breaks the chi-square reference of the
likelihood-ratio statistic (Self & Liang 1987): for one such parameter the reference is
the 50:50 mixture of chi2_0 and chi2_1, whose p-value is half the chi2_1 one.

Fewer mixture components is worse than a boundary: under the smaller model the extra
component's weight is 0 and its parameters are not identified, so the statistic has no
chi-square reference at all (Hartigan 1985; McLachlan 1987); :func:`fewer_components`
finds that case.
"""

from __future__ import annotations

from typing import NamedTuple

from ._model import AbstractModel, unfixed
from .models import (
    Exponential,
    Gamma,
    Mixture,
    NegativeBinomial,
    Normal,
    Poisson,
    StudentT,
    Weibull,
)

__all__ = ["Restriction", "NESTED", "restriction_of", "fewer_components"]


class Restriction(NamedTuple):
    """How a restricted model sits in a full one: ``what`` (e.g. ``"shape = 1"``) and
    whether that restriction is on the ``boundary`` of the full parameter space."""

    what: str
    boundary: bool


NESTED = {  # (restricted class, full class): the restriction
    (Exponential, Gamma): Restriction("shape = 1", False),
    (Exponential, Weibull): Restriction("shape = 1", False),
    (Normal, StudentT): Restriction("df -> infinity", True),
    (Poisson, NegativeBinomial): Restriction("n -> infinity, no over-dispersion", True),
}


def restriction_of(restricted, full) -> Restriction | None:
    """The :class:`Restriction` of a known nested pair of model objects, else ``None``."""
    return NESTED.get((type(restricted), type(full)))


def _components(model) -> int | None:
    """Mixture components of a ready-made model (``K`` for a Mixture, 1 for any other
    ready-made model); ``None`` for a user's log-density."""
    model = unfixed(model)
    if isinstance(model, Mixture):
        return len(model.components)
    return 1 if isinstance(model, AbstractModel) else None


def fewer_components(restricted, full) -> tuple[int, int] | None:
    """``(K_restricted, K_full)`` where ``full`` is a :class:`~mlefit.models.Mixture` with
    more components than ``restricted`` (a Mixture, or one ready-made model: ``K = 1``);
    else ``None``."""
    k_r, k_f = _components(restricted), _components(full)
    if k_r is None or k_f is None or k_f <= k_r:
        return None
    return k_r, k_f
