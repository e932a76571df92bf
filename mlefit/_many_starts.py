"""Starting points of batched fits (:func:`mlefit.fit_many`): one ``init`` per data set.

A ready-made model's data-driven start is computed for every data set from its own
observations (``model.init`` vmapped over the data sets where it traces, on the host
otherwise) and stacked on a leading axis. A data set whose start is not finite or breaks
its constraint is named in a warning and gets a NaN start (:func:`nan_starts`): its fit
stops at once with status ``INIT_NOT_FINITE`` and the others run.
"""

from __future__ import annotations

import copy
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import is_constraint
from ._model import AbstractModel, traced_init

__all__ = ["batched_model_init", "check_batched_u0", "nan_starts", "used_rows"]


def used_rows(a: np.ndarray, w: np.ndarray | None, b: int) -> np.ndarray:
    """The observations of data set ``b`` with positive weight (host array)."""
    return a[b] if w is None else a[b][w[b] > 0]


def _constraint_key(x):
    """What must agree between data sets for a leaf: its constraint (None: unconstrained)."""
    if not is_constraint(x):
        return None
    return (type(x), getattr(x, "low", None), getattr(x, "high", None))


def _with_value(leaf, value):
    """``value`` in place of ``leaf``: a copy of a constraint leaf holding it, else itself."""
    if not is_constraint(leaf):
        return value
    leaf = copy.copy(leaf)
    leaf.value = value
    return leaf


def _stack_inits(inits: list, B: int):
    """One init pytree whose leaves (and constraint values) carry a leading axis ``B``."""
    flat0, treedef = jax.tree_util.tree_flatten(inits[0], is_leaf=is_constraint)
    keys0 = [_constraint_key(x) for x in flat0]
    columns = [[] for _ in flat0]
    for b, init in enumerate(inits):
        flat, td = jax.tree_util.tree_flatten(init, is_leaf=is_constraint)
        if td != treedef or [_constraint_key(x) for x in flat] != keys0:
            raise ValueError(
                f"init: the model's start for data set {b} has a different structure or "
                f"constraints ({td}) than for data set 0 ({treedef})."
            )
        for col, x, k in zip(columns, flat, keys0, strict=True):
            col.append(x if k is None else x.value)
    return treedef.unflatten([_with_value(leaf0, np.stack([np.asarray(v) for v in col]))
                              for leaf0, col in zip(flat0, columns, strict=True)])


def _init_values(model, *obs):
    flat = jax.tree_util.tree_leaves(model.init(*obs), is_leaf=is_constraint)
    return [jnp.asarray(x.value if is_constraint(x) else x) for x in flat]


@eqx.filter_jit
def _vmapped_init_values(model, data):
    return jax.vmap(lambda *obs: _init_values(model, *obs))(*data)


def _traced_model_init(model: AbstractModel, data: tuple):
    """``model.init`` vmapped over the data sets, or ``None`` when it is not traceable."""
    one_set = tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in data)
    start = traced_init(model, one_set)
    if start is None:
        return None
    flat, treedef = jax.tree_util.tree_flatten(start, is_leaf=is_constraint)
    values = _vmapped_init_values(model, data)
    return treedef.unflatten([_with_value(leaf, np.asarray(v))
                              for leaf, v in zip(flat, values, strict=True)])


def _bad_starts(init, B: int) -> np.ndarray:
    """Data sets whose start is not finite or violates its constraint."""
    bad = np.zeros(B, bool)
    for leaf in jax.tree_util.tree_leaves(init, is_leaf=is_constraint):
        v = np.asarray(leaf.value if is_constraint(leaf) else leaf, dtype=float).reshape(B, -1)
        bad |= ~np.isfinite(v).all(axis=1)
        if is_constraint(leaf):
            lo, hi = leaf.bounds()
            bad |= ~((v > lo) & (v < hi)).all(axis=1)
    return bad


def _replace_starts(init, bad: np.ndarray):
    """``init`` with the starts of the ``bad`` data sets replaced by a good one's (a
    placeholder that passes the checks of ``init``; see :func:`nan_starts`)."""
    good = int(np.argmin(bad))

    def fix(leaf):
        v = np.array(leaf.value if is_constraint(leaf) else leaf)
        v[bad] = v[good]
        if is_constraint(leaf):
            leaf = copy.copy(leaf)
            leaf.value = v
            return leaf
        return v

    return jax.tree.map(fix, init, is_leaf=is_constraint)


def nan_starts(u0, bad: np.ndarray | None):
    """Unconstrained starts ``u0`` with those of the ``bad`` data sets set to NaN: those
    fits stop at their first evaluation with status ``INIT_NOT_FINITE`` and NaN parameters,
    and do not hold up the others."""
    if bad is None or not bad.any():
        return u0

    def fix(x):
        v = np.array(x, dtype=x.dtype)
        v[bad] = np.nan
        return v

    return jax.tree.map(fix, u0)


def _host_init_error(model: AbstractModel, hdata: tuple, hw, b: int) -> str:
    """Why the model's start fails for data set ``b``: its own message when ``init`` on the
    host (NumPy) raises one, else a generic reason."""
    try:
        model.init(*(used_rows(a, hw, b) for a in hdata))
    except ValueError as e:
        return str(e)
    return "its start is not finite or outside the constraints"


def batched_model_init(model: AbstractModel, data: tuple, weights, hdata: tuple, hw):
    """The model's data-driven start for every data set, stacked on a leading axis.

    Without padding, ``model.init`` is vmapped over the data sets when it is traceable
    (the ready-made models' are: written once for NumPy and ``jax.numpy``); otherwise,
    or with padding, it runs per data set on the host, on the used observations.
    Returns ``(init, bad)``. A data set whose start fails (``init`` raises ``ValueError``,
    or gives a non-finite or out-of-constraint value, e.g. all values equal: no MLE) is
    flagged in ``bad``, with a warning that names it and the model's reason; its start is
    another data set's, and :func:`nan_starts` later makes it NaN, so that fit stops at the
    first evaluation with status ``INIT_NOT_FINITE``. (Run from another data set's start
    it would go on until ``max_steps`` as its scale collapses, and the batched loop, which
    runs until its slowest member stops, with it.)
    """
    B = hdata[0].shape[0]
    init = None
    if hw is None or (hw > 0).all():
        init = _traced_model_init(model, data)
    failed = []
    if init is None:
        inits = [None] * B
        init_one = model.init  # an equinox bound method: building it costs ~0.1 ms
        for b in range(B):
            try:
                inits[b] = init_one(*(used_rows(a, hw, b) for a in hdata))
            except ValueError as e:
                failed.append((b, str(e)))
        if len(failed) == B:
            b, e = failed[0]
            raise ValueError(f"data set {b}: {e}")
        good = next(i for i in inits if i is not None)
        init = _stack_inits([good if i is None else i for i in inits], B)
    bad = _bad_starts(init, B)
    bad[[b for b, _ in failed]] = True
    if bad.all():
        why = dict(failed).get(0) or _host_init_error(model, hdata, hw, 0)
        raise ValueError(
            f"init: the {model.name} model's start is not valid for any data set; "
            f"data set 0: {why}"
        )
    if bad.any():
        init = _replace_starts(init, bad)
        b = int(np.argmax(bad))
        why = dict(failed).get(b) or _host_init_error(model, hdata, hw, b)
        warnings.warn(
            f"fit_many: the {model.name} model's start failed for {int(bad.sum())} data set(s) "
            f"(first: data set {b}: {why}); those data sets are not fitted: their status is "
            "'init_not_finite' and their parameters NaN.",
            stacklevel=3,
        )
    return init, bad


def check_batched_u0(u0, B: int) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(u0)[0]:
        if leaf.ndim == 0 or leaf.shape[0] != B:
            name = jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"
            raise ValueError(
                f"init: with batched_init=True every parameter needs a leading axis of size "
                f"B={B} (one start per data set); parameter {name!r} has shape {leaf.shape}."
            )
