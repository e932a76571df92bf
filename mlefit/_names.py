"""Names and order of the flat parameters: what labels ``cov``, ``confint`` and ``summary``.

JAX flattens a dict in sorted key order (``ravel_pytree`` of ``{"sigma", "mu"}`` is
``[mu, sigma]``); the library computes in that *flat* order. What the user sees follows
the order the user wrote (``init``'s dict insertion order, or the order of a ready-made
model's ``init``): ``perm[i]`` is the flat position of the ``i``-th parameter shown.
Entries of a parameter whose axes are indexed by data columns are named by those columns
(``coef[age]``), others by position (``coef[0]``, ``W[1,2]``).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from ._constraints import is_constraint

__all__ = ["key_name", "init_order", "flat_layout", "check_labels"]

_K = jax.tree_util


def key_name(path) -> str:
    """``"layer.bias"``, ``"w"``, ``"[0]"``: a readable name of a pytree key path."""
    out = ""
    for k in path:
        if isinstance(k, _K.DictKey):
            out += ("." if out else "") + str(k.key)
        elif isinstance(k, _K.GetAttrKey):
            out += ("." if out else "") + k.name
        elif isinstance(k, _K.SequenceKey):
            out += f"[{k.idx}]"
        elif isinstance(k, _K.FlattenedIndexKey):
            out += f"[{k.key}]"
        else:
            out += ("." if out else "") + str(k)
    return out


def _child(node, k):
    if isinstance(k, _K.DictKey):
        return node[k.key]
    if isinstance(k, _K.SequenceKey):
        return node[k.idx]
    if isinstance(k, _K.GetAttrKey):
        return getattr(node, k.name, None)
    return None  # stop descending; the remaining levels keep JAX's order


def init_order(init) -> tuple:
    """The key paths of ``init``'s leaves (constraints are leaves) in the order written.

    A dict's children come in insertion order; any other node's in JAX's order (a list
    by index, an equinox Module by field). The sort key of a leaf has one entry per
    level: the key's insertion position in a dict, else the flat position of the first
    leaf under that key; siblings always share one kind of entry, so the order is total.

    Example:
        >>> [key_name(p) for p in init_order({"sigma": 1.0, "mu": 0.0})]
        ['sigma', 'mu']
    """
    paths = [p for p, _ in _K.tree_flatten_with_path(init, is_leaf=is_constraint)[0]]
    first: dict = {}
    for i, p in enumerate(paths):
        for d in range(1, len(p) + 1):
            first.setdefault(p[:d], i)

    def sort_key(path):
        node, comps = init, []
        for d, k in enumerate(path):
            if isinstance(node, dict) and isinstance(k, _K.DictKey):
                comps.append(list(node).index(k.key))
            else:
                comps.append(first[path[: d + 1]])
            node = None if node is None else _child(node, k)
        return comps

    return tuple(sorted(paths, key=sort_key))


def _entry_name(base: str, idx: tuple, axes) -> str:
    parts = [
        str(i) if axes is None or axes[a] is None else axes[a][i] for a, i in enumerate(idx)
    ]
    return f"{base}[{','.join(parts)}]"


def flat_layout(u, batch_ndim: int = 0, order=None, labels=()) -> tuple[list[str], np.ndarray]:
    """Returns ``(flat_names, perm)`` of the parameters ``u``.

    ``flat_names[j]`` names flat parameter ``j`` (``ravel_pytree`` order, the rows of the
    Hessian); ``perm[i]`` is the flat index of the ``i``-th parameter in ``order`` (key
    paths as from :func:`init_order`; leaves not in it follow in JAX's order).
    ``labels`` are ``(name, axes)`` pairs: ``axes[a]`` labels axis ``a`` of the leaf
    called ``name`` (``None``: by position).
    """
    by_name = dict(labels)
    entries = _K.tree_flatten_with_path(u)[0]
    names, spans, off = [], [], 0
    for path, x in entries:
        base = key_name(path) or "theta"
        shape = tuple(np.shape(x))[batch_ndim:]
        axes = by_name.get(base)
        if not shape:
            names.append(base)
        else:
            names.extend(_entry_name(base, idx, axes) for idx in np.ndindex(*shape))
        size = math.prod(shape)
        spans.append(np.arange(off, off + size))
        off += size
    rank = {p: r for r, p in enumerate(order or ())}
    seq = sorted(range(len(entries)), key=lambda j: (rank.get(entries[j][0], len(rank)), j))
    perm = np.concatenate([spans[j] for j in seq]) if spans else np.zeros(0, int)
    return names, perm


def check_labels(labels: dict, init, who: str) -> tuple:
    """``labels`` (``{param name: per-axis labels}``) checked against ``init``'s shapes,
    as hashable ``(name, axes)`` pairs. Raises ``ValueError`` naming what does not fit."""
    if not labels:
        return ()
    if not isinstance(labels, dict):
        raise TypeError(f"{who}: param_labels must return a dict, got {type(labels).__name__}")
    shapes = {
        key_name(p): np.shape(x.value if is_constraint(x) else x)
        for p, x in _K.tree_flatten_with_path(init, is_leaf=is_constraint)[0]
    }
    out = []
    for name, axes in labels.items():
        if name not in shapes:
            raise ValueError(f"{who}: param_labels names {name!r}, which is not a parameter "
                             f"(the parameters are {', '.join(shapes)})")
        shape = shapes[name]
        if not isinstance(axes, (tuple, list)) or len(axes) != len(shape):
            raise ValueError(f"{who}: param_labels[{name!r}] needs one entry per axis of "
                             f"{name} (shape {shape}): a sequence of labels or None")
        fixed = []
        for a, lab in enumerate(axes):
            if lab is None:
                fixed.append(None)
                continue
            lab = tuple(str(v) for v in lab)
            if len(lab) != shape[a]:
                raise ValueError(f"{who}: param_labels[{name!r}] gives {len(lab)} labels for "
                                 f"axis {a} of {name}, which has {shape[a]} entries")
            dup = sorted({v for v in lab if lab.count(v) > 1})
            if dup:
                raise ValueError(f"{who}: the labels of {name} repeat {', '.join(map(repr, dup))}"
                                 "; parameter names must be unique (rename the data columns)")
            fixed.append(lab)
        out.append((name, tuple(fixed)))
    return tuple(out)
