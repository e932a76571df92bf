"""Known nested pairs of ready-made models, shared by ``lr_test`` and the CLI's compare.

A restriction on the boundary of the parameter space (a variance component at 0, a
degrees-of-freedom parameter at infinity) breaks the chi-square reference of the
likelihood-ratio statistic (Self & Liang 1987): for one such parameter the reference is
the 50:50 mixture of chi2_0 and chi2_1, whose p-value is half the chi2_1 one.
"""

from __future__ import annotations

from typing import NamedTuple

from .models import Exponential, Gamma, NegativeBinomial, Normal, Poisson, StudentT, Weibull

__all__ = ["Restriction", "NESTED", "restriction_of"]


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
