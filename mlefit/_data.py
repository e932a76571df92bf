"""Data in: what ``fit(model, data)`` accepts, turned into arrays (pandas never imported).

The rule, stated once:

- a **tuple** holds several arrays, one per argument of ``log_prob(params, *obs)``:
  ``(X, y)`` is conditional data. Each element is converted on its own; a DataFrame
  there is a matrix ``(n, d)`` even with one column;
- **anything else is one array**: a NumPy or JAX array; a list of numbers (a sample) or
  of lists (rows of a matrix); a pandas Series (1-D); a DataFrame (a one-column
  DataFrame is a 1-D sample, several columns a matrix ``(n, d)``); any object with
  ``__array__`` or the dataframe interchange protocol (``__dataframe__``);
- a **list of arrays** (or of tuples) is refused as ambiguous: a tuple ``(X, y)`` is
  conditional data, ``np.stack`` makes one array, ``mlefit.batches(list)`` a stream;
- a **stream** of batches is never guessed from iterability: it is an
  :class:`mlefit.ArrayStream` or ``mlefit.batches(iterable)``; a generator or another
  iterable passed as data is an error that says so.

Non-numeric columns (strings, categories, dates) are an error naming the column and its
dtype. Column names are kept (:func:`column_names`) to name the parameters they index.
"""

from __future__ import annotations

import collections.abc
import ctypes
import warnings
from typing import NamedTuple

import jax
import numpy as np

__all__ = ["Data", "as_arrays", "column_names", "check_aligned", "named_arguments"]

# The dataframe interchange protocol's DtypeKind values for numbers.
_XCHG_NUMERIC = {0: "i", 1: "u", 2: "f", 20: "b"}
_XCHG_NULLS = {3: "bitmask", 4: "bytemask"}  # ColumnNullType USE_BITMASK, USE_BYTEMASK


class Data(NamedTuple):
    """Arrays (observations on the leading axis) and, per array, its column names or None."""

    arrays: tuple
    columns: tuple


def _is_frame(x) -> bool:
    """A dataframe: pandas, polars, ... (``columns`` and ``__array__``), by duck typing."""
    return hasattr(x, "columns") and hasattr(x, "__array__") and not isinstance(x, np.ndarray)


def _frame_names(x) -> list:
    names = x.column_names if hasattr(x, "column_names") else x.columns
    return [str(c) for c in names]


def _numeric(dtype) -> bool:
    return np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)


def _not_numeric(name: str, column: str, dtype) -> TypeError:
    return TypeError(
        f"{name}: column {column!r} has dtype {dtype}, expected numbers; encode it first "
        "(e.g. pd.get_dummies(df, columns=[...], dtype=float) for categories, "
        "df[col].cat.codes for integer codes) or drop it."
    )


def _column(x, j: int, label):
    return x.iloc[:, j] if hasattr(x, "iloc") else x[label]


def _frame_array(x, name: str) -> np.ndarray:
    """A dataframe as an ``(n, d)`` array; the first non-numeric column is an error."""
    a = np.asarray(x)
    if _numeric(a.dtype):
        return a
    labels = list(x.column_names if hasattr(x, "column_names") else x.columns)
    cols = []
    for j, label in enumerate(labels):
        col = _column(x, j, label)
        c = np.asarray(col)
        if not _numeric(c.dtype):
            raise _not_numeric(name, str(label), getattr(col, "dtype", c.dtype))
        cols.append(c)
    return np.column_stack(cols) if cols else a


def _xchg_buffer(buf, dtype: np.dtype, offset: int, size: int) -> np.ndarray:
    raw = (ctypes.c_uint8 * buf.bufsize).from_address(buf.ptr)
    return np.frombuffer(raw, dtype=dtype)[offset:offset + size].copy()


def _xchg_column(col, label: str, name: str) -> np.ndarray:
    kind, bits = int(col.dtype[0]), int(col.dtype[1])
    if kind not in _XCHG_NUMERIC:
        raise _not_numeric(name, label, f"{col.dtype[0]} ({col.dtype[2]})")
    buffers = col.get_buffers()
    data_buf, _ = buffers["data"]
    size, offset = col.size(), col.offset
    if kind == 20 and bits == 1:  # bit-packed booleans (Arrow)
        raw = _xchg_buffer(data_buf, np.dtype(np.uint8), 0, data_buf.bufsize)
        values = np.unpackbits(raw, bitorder="little")[offset:offset + size].astype(bool)
    else:
        dt = np.dtype(f"{_XCHG_NUMERIC[kind]}{bits // 8}") if kind != 20 else np.dtype(bool)
        values = _xchg_buffer(data_buf, dt, offset, size)
    null_kind = int(col.describe_null[0])
    if col.null_count and null_kind in _XCHG_NULLS and buffers.get("validity"):
        vbuf, _ = buffers["validity"]
        if _XCHG_NULLS[null_kind] == "bitmask":
            raw = _xchg_buffer(vbuf, np.dtype(np.uint8), 0, vbuf.bufsize)
            mask = np.unpackbits(raw, bitorder="little")[offset:offset + size]
        else:
            mask = _xchg_buffer(vbuf, np.dtype(np.uint8), offset, size)
        missing = mask.astype(bool) == bool(col.describe_null[1])  # the mask value of a null
        values = np.where(missing, np.nan, values.astype(float))  # NaN: fit names the rows
    return values


def _interchange(x, name: str) -> tuple[np.ndarray, list]:
    with warnings.catch_warnings():  # pandas 3 deprecates the protocol it still serves
        warnings.simplefilter("ignore")
        frame = x.__dataframe__()
        labels = [str(c) for c in frame.column_names()]
        cols = [_xchg_column(frame.get_column_by_name(c), c, name) for c in labels]
    return np.column_stack(cols) if cols else np.zeros((0, 0)), labels


def _is_array_object(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) or hasattr(x, "__array__") or hasattr(
        x, "__dataframe__"
    )


def _one(x, name: str, in_tuple: bool) -> tuple:
    """``(array, column names or None)`` of one data argument."""
    if isinstance(x, (np.ndarray, jax.Array)):
        return x, None
    if _is_frame(x) or (hasattr(x, "__dataframe__") and not hasattr(x, "__array__")):
        if _is_frame(x):
            a, labels = _frame_array(x, name), _frame_names(x)
        else:
            a, labels = _interchange(x, name)
        if a.ndim == 2 and a.shape[1] == 1 and not in_tuple:
            return a[:, 0], tuple(labels)  # one column: a sample
        return a, tuple(labels)
    if hasattr(x, "__array__"):  # a Series, an array-like
        a = np.asarray(x)
        label = getattr(x, "name", None)
        if not _numeric(a.dtype) and label is not None:
            raise _not_numeric(name, str(label), getattr(x, "dtype", a.dtype))
        return a, None if label is None else (str(label),)
    if isinstance(x, list):
        if any(_is_array_object(v) and np.ndim(v) > 0 or isinstance(v, tuple) for v in x):
            raise TypeError(
                f"{name}: a list of arrays is ambiguous; pass a tuple (X, y) for conditional "
                "data, one array (np.stack / np.concatenate) for one sample, or "
                "mlefit.batches(the_list) for a stream of batches."
            )
        return np.asarray(x), None
    if isinstance(x, tuple) and in_tuple:
        return np.asarray(x), None
    if isinstance(x, (str, bytes, dict, collections.abc.Set)):
        raise TypeError(f"{name}: expected an array, a list of numbers, a Series or a "
                        f"DataFrame, got {type(x).__name__}.")
    if isinstance(x, collections.abc.Iterable):
        raise TypeError(
            f"{name}: got {type(x).__name__}, an iterable that is not an array; a stream of "
            "batches must be declared: mlefit.fit(model, mlefit.batches(iterable), ...) "
            "(see mlefit.batches), or pass an array, a Series or a DataFrame."
        )
    return np.asarray(x), None


def _row_index(x):
    """The row labels of a pandas Series or DataFrame (``index`` with ``equals``), else None."""
    index = getattr(x, "index", None)
    return index if hasattr(index, "equals") and hasattr(x, "__array__") else None


def named_arguments(data) -> list:
    """``[(name, x), ...]``: the data arguments as error messages name them (``data``, or
    ``data[k]`` in a tuple of several)."""
    if not isinstance(data, tuple):
        return [("data", data)]
    if len(data) == 1:
        return [("data", data[0])]
    return [(f"data[{k}]", x) for k, x in enumerate(data)]


def _label(v):
    return v.item() if isinstance(v, np.generic) else v


def check_aligned(named: list) -> None:
    """``ValueError`` when pandas objects among ``[(name, x), ...]`` carry different row
    indexes: rows are paired by position, so ``(X, y.sample(frac=1))`` would fit ``y``
    to other rows' ``X`` (statsmodels refuses the same). Arrays have no index."""
    indexed = [(nm, idx) for nm, x in named if (idx := _row_index(x)) is not None]
    for nm, idx in indexed[1:]:
        first, ref = indexed[0]
        if len(idx) == len(ref) and not idx.equals(ref):
            diff = (np.flatnonzero(np.asarray(idx) != np.asarray(ref))
                    if idx.dtype == ref.dtype else np.zeros(1, int))
            k = int(diff[0]) if diff.size else 0
            raise ValueError(
                f"{nm}: its index differs from {first}'s (row {k}: {_label(idx[k])!r} "
                f"against {_label(ref[k])!r}); rows are paired by position. Align them first (e.g. "
                f"y = y.loc[X.index], or df.dropna() on one frame before splitting it), or "
                "pass .to_numpy() to pair by position on purpose."
            )


def as_arrays(data) -> Data:
    """Returns the :class:`Data` of anything ``fit`` accepts (the module's rule).

    Raises ``TypeError`` naming the argument for a non-numeric column, a list of arrays,
    a generator or another iterable (a stream must be declared), or a dict.

    Example:
        >>> as_arrays([1.0, 2.0, 4.0]).arrays[0].shape
        (3,)
    """
    if isinstance(data, tuple):
        if not data:
            return Data((), ())
        named = named_arguments(data)
        check_aligned(named)
        pairs = [_one(x, nm, True) for nm, x in named]
    else:
        pairs = [_one(data, "data", False)]
    return Data(tuple(a for a, _ in pairs), tuple(c for _, c in pairs))


def column_names(data) -> tuple | None:
    """Per data argument, its column names (tuple of str) or None; ``None`` when none has any.

    Reads names only (``columns``, ``name``, ``__dataframe__``), no values.
    """
    items = data if isinstance(data, tuple) else (data,)
    out = []
    for x in items:
        if _is_frame(x):
            out.append(tuple(_frame_names(x)))
        elif hasattr(x, "__dataframe__") and not hasattr(x, "__array__"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(tuple(str(c) for c in x.__dataframe__().column_names()))
        elif hasattr(x, "__array__") and getattr(x, "name", None) is not None:
            out.append((str(x.name),))
        else:
            out.append(None)
    return tuple(out) if any(c is not None for c in out) else None
