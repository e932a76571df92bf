"""Arrays with names: the covariance, intervals and parameter table of a fit.

A :class:`LabelledArray` is a NumPy array whose axes may carry labels (parameter names,
column names). It is the array it was (``ci[0, 1]``, ``np.asarray(cov)``, arithmetic,
``jnp`` functions) and also answers to names (``ci["sigma"]``, ``cov["mu", "sigma"]``,
``table[:, "stderr"]``) and converts to pandas (``to_pandas()``) when pandas is installed;
mlefit itself never imports pandas.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

__all__ = ["LabelledArray", "optional_pandas"]


def optional_pandas():
    """The ``pandas`` module, or ``None`` when it is not installed (an optional dependency)."""
    try:
        return importlib.import_module("pandas")
    except ImportError:
        return None


def _check_labels(labels, shape: tuple) -> tuple:
    if len(labels) != len(shape):
        raise ValueError(f"labels: expected one entry per axis ({len(shape)}), got {len(labels)}")
    out = []
    for axis, (lab, n) in enumerate(zip(labels, shape, strict=True)):
        if lab is None:
            out.append(None)
            continue
        lab = tuple(str(v) for v in lab)
        if len(lab) != n:
            raise ValueError(f"labels: axis {axis} has {n} entries but {len(lab)} labels")
        out.append(lab)
    return tuple(out)


def _position(labels, axis: int, name: str) -> int:
    if labels is None or labels[axis] is None:
        raise KeyError(f"{name!r}: axis {axis} of this array has no labels; index it by position")
    try:
        return labels[axis].index(name)
    except ValueError:
        lab = labels[axis]
        shown = ", ".join(map(repr, lab[:12])) + (", ..." if len(lab) > 12 else "")
        raise KeyError(f"{name!r}: not a label of axis {axis}; the labels are {shown}") from None


def _is_names(k) -> bool:
    return isinstance(k, Sequence) and not isinstance(k, str) and len(k) > 0 and all(
        isinstance(v, str) for v in k
    )


class LabelledArray(np.ndarray):
    """A NumPy array whose axes carry labels: ``cov["mu", "sigma"]``, ``ci["sigma"]``.

    Indexing by position works as for any array; a label (``str``) or a list of labels
    in place of an index selects by name on that axis (``ci["mu"]`` is the row of
    ``mu``, ``cov[["mu", "sigma"]][:, ["mu", "sigma"]]`` a sub-matrix,
    ``table[:, "stderr"]`` a column). Results of indexing keep the labels of the axes
    that remain; arithmetic gives plain arrays.

    Attributes:
        labels: one entry per axis: a tuple of labels, or ``None`` (unlabelled).
        names: the labels of the rows (axis ``-2`` of a matrix, axis 0 of a vector):
            the parameter names.
        columns: the labels of the last axis of a matrix (``None`` for a vector).

    Example:
        >>> import numpy as np
        >>> ci = LabelledArray(np.array([[0.5, 1.5], [2.0, 3.0]]),
        ...                    (("mu", "sigma"), ("lower", "upper")))
        >>> float(ci["sigma", "upper"]), float(ci[0, 1])
        (3.0, 1.5)
    """

    def __new__(cls, values, labels):
        obj = np.asarray(values).view(cls)
        obj._labels = _check_labels(tuple(labels), obj.shape)
        return obj

    def __array_finalize__(self, obj):
        # Copies and views of the same shape (``copy()``, ``astype``) keep the labels;
        # ``__getitem__`` and ``transpose`` set them for what they select or permute.
        lab = getattr(obj, "_labels", None)
        self._labels = lab if lab is not None and obj.shape == self.shape else None

    def transpose(self, *axes):
        out = super().transpose(*axes)
        order = axes[0] if len(axes) == 1 and (axes[0] is None or isinstance(
            axes[0], (tuple, list))) else axes
        order = tuple(order) if order else tuple(range(self.ndim))[::-1]
        if isinstance(out, LabelledArray):
            out._labels = None if self._labels is None else tuple(
                self._labels[a] for a in order
            )
        return out

    @property
    def T(self):
        return self.transpose()

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # ufuncs (arithmetic, reductions) return plain arrays: their labels may not hold.
        out = np.asarray(arr).view(np.ndarray)
        return out[()] if return_scalar else out

    # -- names ---------------------------------------------------------------------------
    @property
    def labels(self) -> tuple | None:
        return self._labels

    @property
    def names(self) -> list[str] | None:
        if self._labels is None or self.ndim == 0:
            return None
        lab = self._labels[-2] if self.ndim >= 2 else self._labels[0]
        return None if lab is None else list(lab)

    @property
    def columns(self) -> list[str] | None:
        if self._labels is None or self.ndim < 2 or self._labels[-1] is None:
            return None
        return list(self._labels[-1])

    def __getitem__(self, key):
        labels = self._labels
        parts = key if isinstance(key, tuple) else (key,)
        named = any(isinstance(k, str) or _is_names(k) for k in parts)
        simple = all(
            isinstance(k, (int, np.integer, slice, str)) or _is_names(k) for k in parts
        ) and len(parts) <= self.ndim
        if named and not simple:
            raise KeyError(
                "index by labels with a label, a list of labels, an int or a slice per axis"
            )
        if not simple:
            out = super().__getitem__(key)
            if isinstance(out, LabelledArray):
                out._labels = None
            return out
        pos, new_labels = [], []
        for axis, k in enumerate(parts):
            lab = None if labels is None else labels[axis]
            if isinstance(k, str):
                pos.append(_position(labels, axis, k))
            elif _is_names(k):
                idx = [_position(labels, axis, v) for v in k]
                pos.append(idx)
                new_labels.append(tuple(lab[i] for i in idx))
            elif isinstance(k, slice):
                pos.append(k)
                new_labels.append(None if lab is None else lab[k])
            else:
                pos.append(k)
        if labels is not None:
            new_labels.extend(labels[len(parts):])
        # Lists of labels select crosswise (a sub-matrix), one axis at a time.
        out = super().__getitem__(tuple(slice(None) if isinstance(p, list) else p for p in pos))
        dropped = 0
        for axis, p in enumerate(pos):
            if isinstance(p, list):
                out = np.take(out, p, axis=axis - dropped)
            elif not isinstance(p, slice):
                dropped += 1
        if isinstance(out, LabelledArray):
            has = labels is not None and any(v is not None for v in new_labels)
            out._labels = tuple(new_labels) if has and len(new_labels) == out.ndim else None
        return out

    # -- conversions -----------------------------------------------------------------------
    def to_pandas(self):
        """A ``pandas.Series`` (vector) or ``DataFrame`` (matrix) with the labels as index
        and columns. Raises ``ImportError`` when pandas is not installed."""
        pd = optional_pandas()
        if pd is None:
            raise ImportError("to_pandas: needs pandas (pip install pandas); the array "
                              "itself answers to names: x['name'].")
        values = np.asarray(self)
        if self.ndim == 1:
            return pd.Series(values, index=self.names)
        if self.ndim == 2:
            return pd.DataFrame(values, index=self.names, columns=self.columns)
        raise TypeError(f"to_pandas: a vector or a matrix converts; this array has shape "
                        f"{self.shape} (index the leading axes first)")

    to_frame = to_pandas

    def to_dict(self) -> dict:
        """``{column label: column}`` of a matrix with labelled columns (plain arrays)."""
        if self.columns is None:
            raise TypeError("to_dict: needs a matrix with labelled columns")
        values = np.asarray(self)
        return {c: values[..., j] for j, c in enumerate(self.columns)}

    def __reduce__(self):
        fn, args, state = super().__reduce__()
        return fn, args, (state, self._labels)

    def __setstate__(self, state):
        base, self._labels = state
        super().__setstate__(base)

    # -- display ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        if self._labels is None or self.ndim not in (1, 2) or self.names is None:
            return repr(np.asarray(self)).replace("array", "LabelledArray", 1)
        values = np.asarray(self)
        if self.ndim == 1:
            values, cols = values[:, None], [""]
        else:
            cols = self.columns or [str(j) for j in range(self.shape[1])]
        rows = self.names
        cells = [[_cell(v) for v in row] for row in values]
        w_name = max(len(r) for r in rows) if rows else 0
        widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(cols)]
        lines = [] if self.ndim == 1 else [
            " " * w_name + "".join(f"  {c:>{w}}" for c, w in zip(cols, widths, strict=True))
        ]
        for name, row in zip(rows, cells, strict=True):
            lines.append(f"{name:<{w_name}}" + "".join(
                f"  {v:>{w}}" for v, w in zip(row, widths, strict=True)))
        return "\n".join(line.rstrip() for line in lines)

    __str__ = __repr__


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if np.issubdtype(type(v), np.integer):
        return str(int(v))
    return f"{float(v):.6g}"
