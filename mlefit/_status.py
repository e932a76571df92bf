"""Outcomes of a fit, as data: a small enumeration carried in the result."""

from __future__ import annotations

import enum

__all__ = ["Status"]


class Status(enum.IntEnum):
    """How a fit ended. Stored as an integer code so it can live inside compiled code.

    - ``CONVERGED``: the gradient max-norm of the mean NLL fell below ``tol`` (or the
      NLL could not decrease any further at machine precision with a gradient within
      100 x tol of it).
    - ``MAX_STEPS``: the step (or epoch) budget ran out first.
    - ``NON_FINITE``: the NLL or its gradient became NaN/inf; ``params`` is the last
      finite iterate.
    - ``STALLED``: the line search could make no progress while the gradient is still
      above tolerance (a precision limit or a non-smooth objective).
    - ``HESSIAN_NOT_POSITIVE_DEFINITE``: the optimiser stopped, but the Hessian of the
      NLL is not positive definite there: no standard errors (set by inference).
    - ``AT_BOUND``: an ``Interval``/``Positive`` parameter sits at its bound.
    - ``INTERRUPTED``: the user pressed Ctrl-C; ``params`` is the best point so far.
    - ``INIT_NOT_FINITE``: the NLL at the starting point is not finite. In ``fit_many``
      also a data set whose ready-made model's data-driven start failed (e.g. all values
      equal: no MLE); it is not fitted and its parameters are NaN.
    - ``NOT_AT_MINIMUM``: the gradient is below ``tol``, but Newton's model of the NLL
      still predicts a decrease, ``EDM = g^T H^-1 g / 2`` (the estimated distance to the
      minimum, as in Minuit), above ``max(sqrt(eps), tol) * max(|nll|, 1)`` per
      observation (or above a tenth of an ``nll`` that is below ``sqrt(eps)``), with a
      positive definite Hessian and a Newton step that moves the parameters: the
      gradient is small only because the NLL is flat there, typically because the
      likelihood has no maximum at finite parameters (an exponential rate for data that
      are all 0, ``nll = -log(rate)``; a logistic regression of perfectly separated
      classes, ``nll -> 0`` as the coefficients grow). Set by inference. (A default
      ``fit`` of a small problem first tries Newton steps from there: parameters in large
      units end here otherwise.)
    - ``HESSIAN_NOT_FINITE``: the optimiser converged, but the Hessian of the NLL has NaN
      or inf entries at the estimate (second derivatives that overflow or are undefined
      there, e.g. an ordered model written with +-inf end cut points). This does not say
      the model is unidentified; standard errors from the Hessian are NaN, the summary
      names the parameters whose rows are not finite, and ``covariance("opg")`` (first
      derivatives only) may still give them. Set by inference.
    """

    CONVERGED = 0
    MAX_STEPS = 1
    NON_FINITE = 2
    STALLED = 3
    HESSIAN_NOT_POSITIVE_DEFINITE = 4
    AT_BOUND = 5
    INTERRUPTED = 6
    INIT_NOT_FINITE = 7
    NOT_AT_MINIMUM = 8
    HESSIAN_NOT_FINITE = 9

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "converged: gradient norm below tolerance",
    Status.MAX_STEPS: "stopped at max_steps before the gradient norm reached tol",
    Status.NON_FINITE: (
        "the NLL or its gradient became non-finite; params is the last finite iterate"
    ),
    Status.STALLED: "the line search could not decrease the NLL while the gradient is above tol",
    Status.HESSIAN_NOT_POSITIVE_DEFINITE: (
        "the Hessian of the NLL is not positive definite at the estimate: "
        "the model is not identifiable there, standard errors are NaN"
    ),
    Status.AT_BOUND: "a constrained parameter is at its bound: standard errors are unreliable",
    Status.INTERRUPTED: "interrupted by the user; params is the best point so far",
    Status.INIT_NOT_FINITE: "the NLL at the starting point is not finite",
    Status.NOT_AT_MINIMUM: (
        "the gradient is below tol, but the NLL is still predicted to decrease (EDM "
        "g^T H^-1 g / 2 above sqrt(eps) relative): it is flat there, and the likelihood may "
        "have no maximum at finite parameters (e.g. perfectly separated classes, or all "
        "observations on the boundary of the support); params is where the fit stopped"
    ),
    Status.HESSIAN_NOT_FINITE: (
        "the Hessian of the NLL has NaN or inf entries at the estimate (its second "
        "derivatives are not finite there): standard errors are NaN; covariance('opg') "
        "needs first derivatives only"
    ),
}
