"""Shared helpers of the ready-made models: support checks, shapes, starts.

The checks run in NumPy on the host, before anything is traced or compiled. A model's
``init`` is written once against an array namespace ``xp``: NumPy for one data set
(``fit``), ``jax.numpy`` when traced (``fit_many`` vmaps it over the data sets, one
compiled call instead of a Python loop).
"""

from __future__ import annotations

import functools
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import _bad_rows
from .._constraints import split_init
from .._data import named_arguments
from .._diagnose import magnitude_problem
from .._model import data_arguments, unfixed

__all__ = [
    "data_driven_start",
    "host",
    "raise_first_bad",
    "require_ndim",
    "check_support",
    "check_integers",
    "check_binary",
    "check_labels",
    "check_design",
    "sample_shape",
    "require_spread",
    "array_namespace",
    "warn_unobserved_sets",
    "as_float",
    "checked",
]


def host(a) -> np.ndarray | None:
    """The data as a NumPy array, or ``None`` for a global (multi-process) array."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return None
    return np.asarray(a)


def raise_first_bad(model: str, arg: str, values: np.ndarray, bad: np.ndarray, expected: str):
    """Raises ``ValueError`` naming the first observation (leading index) where ``bad`` holds."""
    if not bad.any():
        return
    rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    i = int(np.argmax(rows))
    v = values[i]
    shown = v.item() if np.ndim(v) == 0 else v.tolist()
    raise ValueError(
        f"{model}: {arg}[{i}] = {shown!r} is outside the support; expected {expected} "
        f"({int(rows.sum())} of {rows.size} observations are not)."
    )


def require_ndim(model: str, arg: str, a: np.ndarray, ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{model}: {arg} must be {ndim}-D ({what}), got shape {a.shape}.")


def check_support(
    model: str,
    x,
    *,
    low=None,
    high=None,
    low_open=True,
    high_open=True,
    arg: str = "data",
    ndim: int = 1,
) -> np.ndarray | None:
    """Checks ``low < x < high`` (or ``<=`` where not open); returns the host array."""
    a = host(x)
    if a is None:
        return None
    require_ndim(model, arg, a, ndim, "one value per observation" if ndim == 1 else "(n, d)")
    bad = np.zeros(a.shape, bool)
    parts = []
    if low is not None:
        bad |= (a <= low) if low_open else (a < low)
        parts.append(f"x {'>' if low_open else '>='} {low}")
    if high is not None:
        bad |= (a >= high) if high_open else (a > high)
        parts.append(f"x {'<' if high_open else '<='} {high}")
    raise_first_bad(model, arg, a, bad, " and ".join(parts))
    return a


def check_integers(model: str, k, *, arg: str = "data") -> np.ndarray | None:
    """Checks non-negative integer-valued counts."""
    a = host(k)
    if a is None:
        return None
    require_ndim(model, arg, a, 1, "one count per observation")
    bad = (a < 0) | (a != np.round(a))
    raise_first_bad(model, arg, a, bad, "a non-negative integer count")
    return a


def check_binary(model: str, y, *, arg: str = "y") -> np.ndarray | None:
    """Checks ``y`` in {0, 1}."""
    a = host(y)
    if a is None:
        return None
    require_ndim(model, arg, a, 1, "one label per observation")
    bad = (a != 0) & (a != 1)
    raise_first_bad(model, arg, a, bad, "0 or 1")
    warn_unobserved(model, arg, a, 2)
    return a


def check_labels(model: str, y, num_classes: int, *, arg: str = "labels") -> np.ndarray | None:
    """Checks integer class labels in ``0 .. num_classes - 1``."""
    a = host(y)
    if a is None:
        return None
    require_ndim(model, arg, a, 1, "one integer label per observation")
    bad = (a < 0) | (a >= num_classes) | (a != np.round(a))
    raise_first_bad(model, arg, a, bad, f"an integer label in 0..{num_classes - 1}")
    warn_unobserved(model, arg, a, num_classes)
    return a


def warn_unobserved(model: str, arg: str, a: np.ndarray, num_classes: int) -> None:
    """A ``UserWarning`` when a class (or outcome) never occurs in ``a``: its MLE
    probability is 0, so a logit is infinite and there is no finite MLE. The fit stops
    where that probability is about ``tol`` (the gradient's size); the estimates and
    standard errors of the logits involved mean nothing. For a binary outcome the status
    also says ``not_at_minimum``; for one class among several (the NLL stays of order 1)
    the status cannot tell, hence the warning."""
    if a.size == 0:
        return
    counts = np.bincount(a.astype(np.int64).ravel(), minlength=num_classes)
    empty = np.flatnonzero(counts == 0).tolist()
    if not empty:
        return
    if num_classes == 2:
        what = (f"every observation of {arg} is {1 - empty[0]}: the MLE of P(y = 1) is "
                f"{1 - empty[0]}, its logit {'+' if empty[0] == 0 else '-'}inf")
        remedy = "add a penalty (or log_prior) that keeps it finite"
    else:
        what = (f"{arg} has no observation of class(es) {empty} (of 0..{num_classes - 1}): "
                "the MLE of their probabilities is 0, their logits -inf")
        remedy = "drop the class, or add a penalty (or log_prior) that keeps them finite"
    warnings.warn(
        f"{model}: {what} (no finite MLE). The fit stops where that probability is within "
        f"about tol of its limit, and the estimate and standard error of such a logit mean "
        f"nothing: {remedy}.",
        UserWarning, stacklevel=_user_level(),
    )


def warn_unobserved_sets(model, hdata: tuple, hw) -> None:
    """``fit_many``'s per-data-set form of :func:`warn_unobserved`: one ``UserWarning``
    when a class (outcome) that occurs in some data sets never occurs among the used
    observations (weight > 0) of others (their logits have no finite MLE). A class absent
    from every data set was named by the model's own check already.

    ``model.label_data``: the index of the data argument holding labels (``None`` for
    models without labels); its classes are ``0 .. num_classes - 1`` (2 for a binary
    outcome).
    """
    base = unfixed(model)
    arg = base.label_data
    if arg is None or hdata[arg].ndim != 2:
        return
    y = hdata[arg]
    used = np.ones(y.shape, bool) if hw is None else hw > 0
    k = getattr(base, "num_classes", 2)
    # class counts per data set in one bincount (the labels passed the model's check)
    code = np.where(used, y, 0).astype(np.int64) + k * np.arange(y.shape[0])[:, None]
    counts = np.bincount(code[used], minlength=y.shape[0] * k).reshape(y.shape[0], k)
    missing = (counts == 0) & (counts.sum(axis=0) > 0)  # absent here, present elsewhere
    sets = np.flatnonzero(missing.any(axis=1) & (used.sum(axis=1) > 0))
    if sets.size == 0:
        return
    b = int(sets[0])
    classes = np.flatnonzero(missing[b]).tolist()
    names = data_arguments(base)[1]
    name = "data" if len(names) == 1 else names[arg]  # as fit's check names them
    warnings.warn(
        f"{base.name}: in {sets.size} of {y.shape[0]} data sets a class of {name} never "
        f"occurs (first: data set {b}, class(es) {classes} of 0..{k - 1}); there the MLE of "
        "its probability is 0, a logit is infinite and there is no finite MLE. Those fits "
        "stop where the probability is within about tol of 0, and the estimates and "
        "standard errors of the logits involved mean nothing: drop those data sets, or "
        "add a penalty (or log_prior) that keeps the logits finite.",
        UserWarning, stacklevel=_user_level(),
    )


def _user_level() -> int:
    """The ``stacklevel`` of the first frame outside mlefit, equinox and JAX (where the
    user called ``fit``), for warnings raised while checking data."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
            "mlefit", "equinox", "jax"):
        frame, level = frame.f_back, level + 1
    return level

def check_design(model: str, X) -> np.ndarray | None:
    """Checks that the design matrix is 2-D ``(n, d)`` with ``d >= 1``."""
    a = host(X)
    if a is None:
        return None
    require_ndim(model, "X", a, 2, "design matrix (n, d)")
    if a.shape[1] == 0:
        raise ValueError(f"{model}: X has no columns (shape {a.shape}); give at least one.")
    return a


def sample_shape(n) -> tuple:
    """``n`` (an int) or a shape, as a tuple."""
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return (int(n),)
    try:
        return tuple(int(s) for s in n)
    except TypeError as e:
        raise TypeError(f"n: expected an int or a shape tuple, got {n!r}") from e


class NoStartError(ValueError):
    """The data cannot identify the model (e.g. all observations equal): no start."""


def require_spread(model: str, ok: bool, what: str) -> None:
    """Raises :class:`NoStartError` when the data cannot identify the model (e.g. all
    observations equal)."""
    if not ok:
        raise NoStartError(f"{model}: cannot start a fit: {what}.")


def array_namespace(*arrays):
    """``jax.numpy`` when an argument is traced (a vmapped start), else NumPy."""
    return jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np


def as_float(xp, a):
    """``a`` as a float array of ``xp``: float64 in NumPy, JAX's default float when traced."""
    return np.asarray(a, np.float64) if xp is np else jnp.asarray(a, jnp.result_type(float))


def spread(a):
    """Whether the observations ``a`` are not all equal, tested exactly: the standard
    deviation of equal values can come out a rounding error above 0 (the mean of 50
    copies of 2.0 in log space), which would pass a ``std > 0`` test."""
    return a.max() > a.min()


def checked(xp, model: str, ok, value, what: str):
    """``value`` where the data identify the model (``ok``). Otherwise NumPy raises
    (:func:`require_spread`) and a traced start is NaN: a traced call cannot raise, and
    ``fit_many`` reports a non-finite start per data set."""
    if xp is np:
        require_spread(model, bool(np.all(ok)), what)
        return np.asarray(value)[()]  # a NumPy scalar, not a 0-d array
    return jnp.where(ok, value, jnp.nan)


def _valid_start(start) -> bool:
    try:
        u, _ = split_init(start, np.float64)  # the host start, before any cast
    except ValueError:  # not finite, or outside its constraint (e.g. a scale of 0)
        return False
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(u))


def _has_spread(data) -> bool:
    return any(
        a is not None and a.size > 1 and np.issubdtype(a.dtype, np.number) and spread(a)
        for a in map(host, data)
    )


def _raise_if_not_finite(model: str, data: tuple) -> None:
    """On a failed start only: a NaN or inf among the data (``fit`` refuses them before,
    ``fit_many(check_finite=False)`` may not) is the reason, named by its row."""
    for name, a in named_arguments(tuple(map(host, data))):
        if a is not None and np.issubdtype(a.dtype, np.inexact):
            bad = _bad_rows(a.reshape(a.shape[0], -1))
            if bad.any():
                raise NoStartError(f"{model}: cannot start a fit: {name}[{int(np.argmax(bad))}] "
                                   "is not finite (NaN or inf); remove or impute it.")


def data_driven_start(init):
    """Decorates a ready-made model's ``init(self, *data)`` to blame the data's magnitude.

    On the host (NumPy): a start that is not finite or not inside its constraint although
    the data are finite, or a "no spread" failure (:class:`NoStartError`) on data that do
    spread, is a ``ValueError`` saying to rescale the data when float64 cannot hold their
    moments (``x**2`` overflows, e.g. data of order 1e300, or underflows, order 1e-300).
    A traced call (``fit_many``'s vmapped start) is unchanged: it reports a NaN start per
    data set, and ``fit_many`` then asks the host version why.
    """

    @functools.wraps(init)
    def start(self, *data):
        if array_namespace(*data) is not np:
            return init(self, *data)
        what = f"the moments the {self.name} start needs"
        try:
            with np.errstate(over="ignore", under="ignore"):  # diagnosed below
                out = init(self, *data)
        except NoStartError as e:  # "no spread", where the spread may have underflowed
            _raise_if_not_finite(self.name, data)
            msg = magnitude_problem(data, what) if _has_spread(data) else None
            if msg is None:
                raise
            raise ValueError(msg) from e
        if not _valid_start(out):
            _raise_if_not_finite(self.name, data)
            msg = magnitude_problem(data, what)
            if msg is not None:
                raise ValueError(msg)
        return out

    return start
