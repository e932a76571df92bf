"""What a model is: a log-density of ONE observation, normalised to ``logp(params, *obs)``.

Three forms are accepted, all reduced to one pure function:

1. a plain callable ``log_prob(params, *obs) -> scalar``; ``init`` is required;
2. an equinox Module with ``log_prob(self, *obs)``: the module *is* the parameters,
   its inexact-array leaves are fitted and the fitted Module is ``res.params``;
3. a ready-made model (subclass of :class:`AbstractModel`) with
   ``log_prob(self, params, *obs)`` and a data-driven ``init(*data)``.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

from ._names import check_labels, init_order

__all__ = ["AbstractModel", "Problem", "as_problem"]


class AbstractModel(eqx.Module):
    """Base class of ready-made models: ``log p(obs; params)`` with a data-driven start.

    Subclasses implement ``log_prob(self, params, *obs)`` (scalar log-density of one
    observation) and ``init(self, *data)`` (a start, with ``Positive``/``Interval``
    leaves where parameters are constrained). Optional: ``check_data(*data)`` raising
    ``ValueError`` for data outside the support, and ``sample(key, params, n)``.
    """

    @abc.abstractmethod
    def log_prob(self, params, *obs):
        raise NotImplementedError

    @abc.abstractmethod
    def init(self, *data):
        raise NotImplementedError

    def check_data(self, *data) -> None:  # noqa: B027 - optional hook
        """Raises ``ValueError`` naming the first observation outside the support."""

    def param_labels(self, *columns) -> dict:
        """Names for the entries of parameters indexed by data columns (optional hook).

        ``columns[k]`` holds the column names of data argument ``k`` (a tuple of str, from
        a DataFrame or a named Series) or ``None``. Returns ``{param: axes}``, ``axes``
        one entry per axis of that parameter: a sequence of labels, or ``None`` to keep
        positions. A regression whose ``coef`` (shape ``(d,)``) is indexed by the columns
        of ``X`` returns ``{"coef": (columns[0],)}`` when ``columns[0]`` is not None, and
        ``res.param_names`` then reads ``coef[age]`` instead of ``coef[0]``. Default: no
        labels.

        Example:
            >>> import mlefit
            >>> mlefit.models.Logistic().param_labels(("age", "dose"), None)
            {'coef': (('age', 'dose'),)}
        """
        return {}

    @property
    def name(self) -> str:
        return type(self).__name__


class _ModuleLogProb(eqx.Module):
    """``logp(dyn, *obs) = combine(dyn, static).log_prob(*obs)`` for a Module-as-params."""

    static: Any = eqx.field(static=True)

    def __call__(self, dyn, *obs):
        return eqx.combine(dyn, self.static).log_prob(*obs)


class Problem(eqx.Module):
    """A normalised model: the pure log-density and how to rebuild user-facing params.

    ``logp(params, *obs)`` works on *constrained* params in the fitted form (for a
    Module-as-params, its array leaves only). ``finalize(params)`` gives what the user sees.
    """

    logp: Callable = eqx.field(static=True)
    name: str = eqx.field(static=True)
    module_static: Any = eqx.field(static=True, default=None)
    source: Any = eqx.field(static=True, default=None)
    # The parameters' key paths in the order written (``init_order``), or None: JAX's.
    order: tuple | None = eqx.field(static=True, default=None)
    # ``(param name, per-axis labels)`` pairs from ``param_labels`` (see mlefit/_names.py).
    labels: tuple = eqx.field(static=True, default=())
    # Per data argument, its column names (a tuple of str) or None; None when none had any.
    columns: tuple | None = eqx.field(static=True, default=None)

    def finalize(self, params):
        if self.module_static is None:
            return params
        return eqx.combine(params, self.module_static)

    def param_order(self, one_set: tuple | None) -> tuple | None:
        """The parameters' key paths in the order to show them, or None (JAX's order).

        ``order`` when known; for a ready-made model fitted without a Python-level start
        (``fit_many`` traces its ``init``), the key order of ``init`` traced abstractly on
        one data set's shapes ``one_set`` (no values computed; cached).
        """
        if self.order is not None or one_set is None or not isinstance(self.source, AbstractModel):
            return self.order
        return _model_init_order(self.source, one_set)


_INIT_ORDER: dict = {}


def _model_init_order(model: AbstractModel, one_set: tuple) -> tuple | None:
    key = (model, one_set)
    try:
        return _INIT_ORDER[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable model field: no cache
        key = None
    captured = {}

    def start(*obs):
        captured["init"] = model.init(*obs)
        return 0.0

    try:
        jax.eval_shape(start, *one_set)
        order = init_order(captured["init"])
    except (TypeError, ValueError):  # an init JAX cannot trace: keep JAX's order
        order = None
    if key is not None:
        if len(_INIT_ORDER) > 256:
            _INIT_ORDER.clear()
        _INIT_ORDER[key] = order
    return order


def _n_positional(fn) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def as_problem(model, init, data: tuple, columns: tuple | None = None):
    """Returns ``(problem, init)`` for any accepted model form.

    ``columns`` (per data argument, its column names or None; see
    ``mlefit._data.column_names``) name the parameters a ready-made model indexes by
    them (``AbstractModel.param_labels``). The problem records ``init``'s order.

    Raises ``TypeError``/``ValueError`` naming the problem when the model is not
    usable, or ``init`` is missing for a plain function.
    """
    if isinstance(model, AbstractModel):
        model.check_data(*data)
        if init is None:
            init = model.init(*data)
        labels = model.param_labels(*columns) if columns is not None else {}
        return Problem(
            logp=model.log_prob,
            name=model.name,
            source=model,
            order=init_order(init),
            labels=check_labels(labels, init, f"model {model.name}"),
            columns=columns,
        ), init
    if isinstance(model, eqx.Module) and hasattr(model, "log_prob"):
        if init is not None:
            raise ValueError(
                "init: an equinox Module is its own parameters; pass init=None "
                "(or pass the model as a function log_prob(params, *obs) with init)."
            )
        dyn, static = eqx.partition(model, eqx.is_inexact_array)
        if not jax.tree_util.tree_leaves(dyn):
            raise ValueError(
                f"model: the {type(model).__name__} Module has no floating-point array "
                "fields to fit."
            )
        return (
            Problem(
                logp=_ModuleLogProb(static),
                name=type(model).__name__,
                module_static=static,
                columns=columns,
            ),
            dyn,
        )
    if callable(model):
        if init is None:
            raise ValueError(
                "init: a model given as a plain function log_prob(params, *obs) needs a "
                "starting point, e.g. init={'mu': 0.0, 'sigma': mlefit.Positive(1.0)}."
            )
        n = _n_positional(model)
        if n is not None and n != 1 + len(data):
            raise TypeError(
                f"model: {getattr(model, '__name__', model)!r} takes {n} positional "
                f"argument(s) but is called as log_prob(params, *obs) with {len(data)} "
                f"data array(s), i.e. {1 + len(data)} arguments."
            )
        name = getattr(model, "__name__", type(model).__name__)
        return Problem(logp=model, name=name, order=init_order(init), columns=columns), init
    raise TypeError(
        f"model: expected a function log_prob(params, *obs), an equinox Module with a "
        f"log_prob(self, *obs) method, or an mlefit model; got {type(model).__name__}."
    )
