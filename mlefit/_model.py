"""What a model is: a log-density of ONE observation, normalised to ``logp(params, *obs)``.

Three forms are accepted, all reduced to one pure function:

1. a plain callable ``log_prob(params, *obs) -> scalar``; ``init`` is required;
2. an equinox Module with ``log_prob(self, *obs)``: the module *is* the parameters,
   its inexact-array leaves are fitted and the fitted Module is ``res.params``;
3. a ready-made model (subclass of :class:`AbstractModel`) with
   ``log_prob(self, params, *obs)`` and a data-driven ``init(*data)``.

Fixed parameters (``fit(..., fixed={"name": value})``, ``model.fix(name=value)``) are a
partial application: the fitted parameters are the others, the log-density receives
them merged with the fixed values (:class:`FixedValues`). A penalty is added to the
objective's per-observation kernel (:func:`mlefit._likelihood.penalised`).
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import is_constraint
from ._names import check_labels, init_order

__all__ = ["AbstractModel", "FixedModel", "FixedValues", "Problem", "as_problem", "leaf_name"]


class AbstractModel(eqx.Module):
    """Base class of ready-made models: ``log p(obs; params)`` with a data-driven start.

    Subclasses implement ``log_prob(self, params, *obs)`` (scalar log-density of one
    observation) and ``init(self, *data)`` (a start, with ``Positive``/``Interval``
    leaves where parameters are constrained). Optional: ``check_data(*data)`` raising
    ``ValueError`` for data outside the support, and ``sample(key, params, n)``.

    Non-smooth likelihoods (a kink in a parameter, as the Laplace location): set
    ``smooth = False`` and implement :meth:`fisher_information`; standard errors then
    come from the expected information instead of the autodiff Hessian.
    """

    #: ``False`` where ``log_prob`` is not twice differentiable in the parameters at the
    #: estimate (kinks): inference then uses :meth:`fisher_information`.
    smooth: ClassVar[bool] = True
    #: The index of the data argument holding class labels ``0 .. num_classes - 1``
    #: (2 classes without ``num_classes``), or ``None``: ``fit_many`` then warns about a
    #: class that some data sets never observe (no finite MLE there).
    label_data: ClassVar[int | None] = None

    @abc.abstractmethod
    def log_prob(self, params, *obs):
        raise NotImplementedError

    @abc.abstractmethod
    def init(self, *data):
        raise NotImplementedError

    def check_data(self, *data) -> None:  # noqa: B027 - optional hook
        """Raises ``ValueError`` naming the first observation outside the support."""

    def fisher_information(self, params, *obs) -> jax.Array:
        """The expected (Fisher) information of ONE observation, ``(p, p)``.

        ``I(w) = E[s s^T] = -E[d^2 log p / dw dw^T]`` with ``s`` the score, over the
        parameters flattened in ``jax.flatten_util.ravel_pytree(params)`` order (dict
        keys sorted), constrained coordinates. ``obs`` is one observation (covariates of
        a conditional model; unconditional models may ignore it). Required when
        ``smooth = False``.
        """
        raise NotImplementedError(
            f"{self.name}: smooth = False needs fisher_information(params, *obs)"
        )

    def fix(self, **values) -> FixedModel:
        """Returns this model with the named parameters held at the given values.

        ``Gamma().fix(scale=2.0)`` is the one-parameter model ``x ~ Gamma(shape, 2)``
        (scipy's ``gamma.fit(x, fscale=2.0)``): fitted, compared and resampled as a model
        of its own; the fixed values appear in ``res.params`` and ``summary()`` marks
        them ``(fixed)``. Same as ``fit(model, x, fixed={"scale": 2.0})``.
        """
        return FixedModel(self, FixedValues.of(values))

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


def leaf_name(path) -> str:
    """A readable name of a parameter leaf from its pytree path (``"a.b"``, ``"w[0]"``),
    as in ``res.param_names`` without the element index."""
    out = ""
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out += ("." if out else "") + str(k.key)
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out += ("." if out else "") + k.name
        elif isinstance(k, jax.tree_util.SequenceKey):
            out += f"[{k.idx}]"
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            out += f"[{k.key}]"
        else:
            out += ("." if out else "") + str(k)
    return out


def _is_slot(x) -> bool:
    """A leaf of an init or params pytree, where ``None`` marks a fixed parameter's slot."""
    return x is None or is_constraint(x)


class FixedValues(eqx.Module):
    """Fixed parameters by name: ``((name, shape, values), ...)``, hashable (static).

    A fixed parameter is a whole leaf of the parameter pytree, named by its path as in
    ``res.param_names`` (``"scale"``, ``"prior.sigma"``, ``"layers[1]"``). In the fitted
    pytree its slot holds ``None``; :meth:`merge` puts the value back.
    """

    items: tuple = eqx.field(static=True)

    @classmethod
    def of(cls, fixed) -> FixedValues:
        """From a mapping ``{name: value}``; ``TypeError``/``ValueError`` for bad values."""
        if isinstance(fixed, FixedValues):
            return fixed
        if not isinstance(fixed, Mapping):
            raise TypeError(
                f"fixed: expected a dict {{name: value}}, got {type(fixed).__name__}"
            )
        items = []
        for name, value in fixed.items():
            if not isinstance(name, str):
                raise TypeError(f"fixed: parameter names are strings, got {name!r}")
            try:
                v = np.asarray(value, dtype=float)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"fixed: {name!r} = {value!r} is not a number or numeric array"
                ) from e
            if not np.all(np.isfinite(v)):
                raise ValueError(f"fixed: {name!r} = {value!r} is not finite")
            items.append((name, v.shape, tuple(v.ravel().tolist())))
        return cls(tuple(items))

    @property
    def names(self) -> tuple:
        return tuple(name for name, _, _ in self.items)

    def value(self, name: str) -> np.ndarray:
        for n, shape, vals in self.items:
            if n == name:
                return np.asarray(vals, dtype=float).reshape(shape)
        raise KeyError(name)

    def free(self, init):
        """``init`` with the fixed leaves replaced by ``None`` (their slots), after checks.

        ``ValueError`` for a name that is not a parameter (listing the valid ones), for a
        value of another shape or outside the parameter's constraint, and when every
        parameter is fixed. Runs on the host, before anything is compiled.
        """
        leaves, treedef = jax.tree_util.tree_flatten_with_path(init, is_leaf=_is_slot)
        names = [leaf_name(path) for path, _ in leaves]
        unknown = [n for n in self.names if n not in names]
        if unknown:
            raise ValueError(_unknown_message(unknown[0], names, init))
        out = []
        for name, leaf in zip(names, (x for _, x in leaves), strict=True):
            if name not in self.names:
                out.append(leaf)
                continue
            start = leaf.value if is_constraint(leaf) else leaf
            shape = np.shape(start) if start is not None else None
            v = self.value(name)
            if shape is not None and v.shape != shape:
                raise ValueError(
                    f"fixed: {name!r} has shape {shape} but its fixed value has shape "
                    f"{v.shape}; give an array of shape {shape}."
                )
            if is_constraint(leaf):
                lo, hi = leaf.bounds()
                if not np.all((v > lo) & (v < hi)):
                    raise ValueError(
                        f"fixed: {name!r} = {v.tolist()!r} is outside its constraint "
                        f"{type(leaf).__name__} ({lo}, {hi}); give a value inside it."
                    )
            out.append(None)
        if all(x is None for x in out):
            raise ValueError(
                f"fixed: every parameter ({', '.join(names)}) is fixed, so there is nothing "
                "to fit; evaluate mlefit.loglik(model, params, data) instead."
            )
        return _in_order_of(init, treedef.unflatten(out))

    def merge(self, params, fill=None, batch_shape: tuple = ()):
        """``params`` with each fixed slot (``None``) holding its value (or ``fill``).

        Values take the dtype of the fitted leaves; ``batch_shape`` (``(B,)`` for the
        results of ``fit_many``) is prepended, the same value for every data set. A dict
        without a fixed top-level key (``{"scale": 2.0}`` for ``Gamma().fix(shape=3.0)``)
        gets the key added.
        """
        if isinstance(params, dict):
            missing = [n for n in self.names if n not in params and "." not in n and "[" not in n]
            params = {**params, **dict.fromkeys(missing)}
        leaves, treedef = jax.tree_util.tree_flatten_with_path(
            params, is_leaf=lambda x: x is None
        )
        free = [x for _, x in leaves if x is not None]
        dtype = jnp.result_type(*free) if free else jnp.result_type(float)
        out = []
        for path, x in leaves:
            name = leaf_name(path)
            if x is None and name in self.names:
                v = self.value(name) if fill is None else np.full(self.value(name).shape, fill)
                x = jnp.broadcast_to(jnp.asarray(v, dtype), tuple(batch_shape) + np.shape(v))
            out.append(x)
        return treedef.unflatten(out)


def _in_order_of(template, tree):
    """``tree`` with its dicts' keys in the order of ``template``'s (JAX rebuilds dicts
    with sorted keys; the order written is the order ``param_names`` shows)."""
    if type(template) is dict and type(tree) is dict:  # other mappings keep their own order
        return {k: _in_order_of(template[k], tree[k]) for k in template}
    return tree


def _unknown_message(name: str, names: list, init) -> str:
    valid = ", ".join(map(repr, names))
    base = name.split("[")[0]
    hint = ""
    if base != name and base in names:
        hint = (
            f" {name!r} names elements of the array parameter {base!r}; fixed= holds whole "
            f"parameters: fix {base!r}, or split it into two parameters."
        )
    return f"fixed: unknown parameter {name!r}; the parameters are {valid}.{hint}"


class FixedModel(AbstractModel):
    """A ready-made model with some parameters held fixed (see :meth:`AbstractModel.fix`).

    ``log_prob(params, *obs) = model.log_prob(merge(params, fixed), *obs)``: the fitted
    parameters are the free ones; ``init`` is the model's start without the fixed
    parameters. Other methods taking ``params`` (``sample``, ``log_cdf``, ...) are the
    wrapped model's with the fixed values merged in.
    """

    model: AbstractModel = eqx.field(static=True)
    fixed: FixedValues = eqx.field(static=True)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def smooth(self) -> bool:  # type: ignore[override]
        return self.model.smooth

    def log_prob(self, params, *obs):
        return self.model.log_prob(self.fixed.merge(params), *obs)

    def init(self, *data):
        return self.fixed.free(self.model.init(*data))

    def param_labels(self, *columns) -> dict:
        """The wrapped model's labels of the free parameters (``coef[age]`` stays
        ``coef[age]`` when the intercept is fixed)."""
        labels = self.model.param_labels(*columns)
        return {k: v for k, v in labels.items() if k not in self.fixed.names}

    def check_data(self, *data) -> None:
        self.model.check_data(*data)

    def fisher_information(self, params, *obs):
        """The wrapped model's information, rows and columns of the free parameters."""
        full = self.fixed.merge(params)
        info = self.model.fisher_information(full, *obs)
        keep = np.concatenate([
            np.full(int(np.size(x)), leaf_name(path) not in self.fixed.names)
            for path, x in jax.tree_util.tree_flatten_with_path(full)[0]
        ])
        idx = np.flatnonzero(keep)
        return info[np.ix_(idx, idx)]

    def fix(self, **values) -> FixedModel:
        items = {n: self.fixed.value(n) for n in self.fixed.names}
        items.update(values)
        return FixedModel(self.model, FixedValues.of(items))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("model", "fixed"):
            raise AttributeError(name)
        attr = getattr(self.model, name)
        if not callable(attr):
            return attr
        try:
            sig = inspect.signature(attr)
        except (TypeError, ValueError):
            return attr
        if "params" not in sig.parameters:
            return attr

        def with_fixed(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.arguments["params"] = self.fixed.merge(bound.arguments["params"])
            return attr(*bound.args, **bound.kwargs)

        return with_fixed


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
    fixed: FixedValues | None = eqx.field(static=True, default=None)
    # The log-density alone where ``logp`` is a penalised objective kernel, and the
    # penalty ``f(params)`` on the fitted params (see mlefit._likelihood.penalised).
    density: Callable | None = eqx.field(static=True, default=None)
    penalty: Callable | None = eqx.field(static=True, default=None)
    # The parameters' key paths in the order written (``init_order``), or None: JAX's.
    order: tuple | None = eqx.field(static=True, default=None)
    # ``(param name, per-axis labels)`` pairs from ``param_labels`` (see mlefit/_names.py).
    labels: tuple = eqx.field(static=True, default=())
    # Per data argument, its column names (a tuple of str) or None; None when none had any.
    columns: tuple | None = eqx.field(static=True, default=None)

    @property
    def log_density(self) -> Callable:
        """``log p(params, *obs)`` without any penalty (what a plot of the fit draws)."""
        return self.logp if self.density is None else self.density

    def finalize(self, params, fill=None, batch_shape: tuple = ()):
        """The user-facing pytree: the Module rebuilt, fixed values (or ``fill``) merged
        (repeated over ``batch_shape`` for a batched result)."""
        if self.fixed is not None:
            params = self.fixed.merge(params, fill, batch_shape)
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


_TRACED_INIT: dict = {}  # (model, shapes of one data set) -> abstract init or None


def traced_init(model: AbstractModel, one_set: tuple):
    """``model.init`` traced abstractly on one data set's shapes ``one_set`` (no values
    computed; cached): its pytree with abstract leaves, or ``None`` where JAX cannot
    trace it (an ``init`` that needs concrete values)."""
    key = (model, one_set)
    try:
        return _TRACED_INIT[key]
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
        out = captured["init"]
    except (TypeError, ValueError):  # JAX's concretization errors are TypeErrors
        out = None
    if key is not None:
        if len(_TRACED_INIT) > 256:
            _TRACED_INIT.clear()
        _TRACED_INIT[key] = out
    return out


def _model_init_order(model: AbstractModel, one_set: tuple) -> tuple | None:
    start = traced_init(model, one_set)
    return None if start is None else init_order(start)


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


class _MergedLogProb(eqx.Module):
    """``logp(merge(params, fixed), *obs)``: a plain log-density with fixed parameters."""

    logp: Callable = eqx.field(static=True)
    fixed: FixedValues = eqx.field(static=True)

    def __call__(self, params, *obs):
        return self.logp(self.fixed.merge(params), *obs)


def unfixed(model):
    """The ready-made model behind a :class:`FixedModel` (``model.fix(...)`` or
    ``fit(..., fixed=...)``); any other model unchanged."""
    return model.model if isinstance(model, FixedModel) else model


def data_arguments(model: AbstractModel) -> tuple[int, list[str]] | None:
    """``(required, names)`` of the data arguments of a ready-made model's
    ``log_prob(params, *obs)``; ``None`` where its signature does not say (``*obs``)."""
    base = unfixed(model)
    try:
        obs = list(inspect.signature(base.log_prob).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in obs):
        return None
    names = [p.name for p in obs if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return sum(1 for p in obs if p.default is p.empty and p.name in names), names


def check_arity(model: AbstractModel, data: tuple) -> None:
    """``TypeError`` when a ready-made model gets another number of data arguments than
    its ``log_prob(params, *obs)`` takes (one array, or a tuple such as ``(X, y)``)."""
    arity = data_arguments(model)
    if arity is None or arity[0] <= len(data) <= len(arity[1]):
        return
    names = arity[1]
    want = ("one array" if len(names) == 1 else
            f"a tuple ({', '.join(names)}) of {len(names)} arrays")
    got = "one array" if len(data) == 1 else f"a tuple of {len(data)} arrays"
    raise TypeError(f"data: {model.name} takes {want}, got {got}.")


def as_problem(model, init, data: tuple, fixed=None, columns: tuple | None = None,
               check_data: bool = True):
    """Returns ``(problem, init)`` for any accepted model form.

    ``fixed``: ``{name: value}`` of parameters held fixed (whole leaves of ``init``,
    named as in ``res.param_names``); ``init`` is returned without them (``None`` in
    their slots) and the problem's ``logp`` merges them back. ``columns`` (per data
    argument, its column names or None; see ``mlefit._data.column_names``) name the
    parameters a ready-made model indexes by them (``AbstractModel.param_labels``). The
    problem records ``init``'s order. ``check_data=False`` skips a ready-made model's
    support check (traced data, which the host cannot read).

    Raises ``TypeError``/``ValueError`` naming the problem when the model is not
    usable, or ``init`` is missing for a plain function.
    """
    fixed = None if fixed is None or (isinstance(fixed, Mapping) and not fixed) else (
        FixedValues.of(fixed)
    )
    if isinstance(model, AbstractModel):
        check_arity(model, data)
        if fixed is not None:
            model = model.fix(**{n: fixed.value(n) for n in fixed.names})
        if check_data:
            model.check_data(*data)
        if init is None:
            init = model.init(*data)
        elif isinstance(model, FixedModel):
            init = model.fixed.free(init)
        own = model.fixed if isinstance(model, FixedModel) else None
        labels = model.param_labels(*columns) if columns is not None else {}
        return Problem(
            logp=model.log_prob,
            name=model.name,
            source=model,
            fixed=own,
            order=init_order(init),
            labels=check_labels(labels, init, f"model {model.name}"),
            columns=columns,
        ), init
    if isinstance(model, eqx.Module) and hasattr(model, "log_prob"):
        if fixed is not None:
            raise ValueError(
                "fixed: an equinox Module is its own parameters; fixed= is for a function "
                "log_prob(params, *obs) with init, or a ready-made model (mark a Module "
                "field static, or wrap it in jax.lax.stop_gradient, to hold it fixed)."
            )
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
        order = init_order(init)
        if fixed is None:
            return Problem(logp=model, name=name, order=order, columns=columns), init
        init = fixed.free(init)
        return Problem(logp=_MergedLogProb(model, fixed), name=name, fixed=fixed,
                       order=init_order(init), columns=columns), init
    raise TypeError(
        f"model: expected a function log_prob(params, *obs), an equinox Module with a "
        f"log_prob(self, *obs) method, or an mlefit model; got {type(model).__name__}."
    )
