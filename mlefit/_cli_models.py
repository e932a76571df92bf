"""Which distribution, which column: the ``--dist`` names of the ``mlefit`` command line,
the column read from a file, and the checks that the column suits the distribution.

Every unconditional ready-made model of :mod:`mlefit.models` whose observation is one
number is a ``--dist`` (lower-cased class name, or an alias such as ``gaussian``). Bad
input raises :class:`UsageError` with the file, line and column, before anything is
compiled.
"""

from __future__ import annotations

import inspect
import math
import re

from . import _model, datasets, models
from .models import Categorical

# Friendly spellings accepted for --dist, mapped to the canonical (lower-cased class) name.
_ALIASES = {
    "gaussian": "normal",
    "norm": "normal",
    "expon": "exponential",
    "exp": "exponential",
    "t": "studentt",
    "student": "studentt",
    "negbinomial": "negativebinomial",
    "negbin": "negativebinomial",
    "nbinom": "negativebinomial",
}
# The name shown for a canonical name (short where people use a short one).
_DISPLAY = {"negativebinomial": "negbinomial"}
# Unconditional models whose observation is a vector, not one number: not for one column.
_NOT_SCALAR = {"multivariatenormal"}


BUNDLED_COLUMN = "duration"


class UsageError(Exception):
    """Bad input from the user: printed as one line on stderr, exit status 2."""


# -- distributions ------------------------------------------------------------------------
def _categorical(x):
    """A Categorical over the labels ``0 .. max(x)`` (at least two classes)."""

    top = float(x.max()) if x.size else 0.0
    return Categorical(num_classes=max(2, int(top) + 1) if math.isfinite(top) else 2)


# Models whose constructor needs something from the data (canonical name -> factory(x)).
_FACTORIES = {"categorical": _categorical}


def available_dists() -> dict[str, type]:
    """Canonical CLI name -> class, for every unconditional ready-made model in ``mlefit.models``.

    Unconditional means ``log_prob(self, params, x)`` takes one observation array, and
    the model is built with no arguments (categorical: its classes are read from the data).
    """
    out = {}
    for attr in getattr(models, "__all__", dir(models)):
        cls = getattr(models, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, _model.AbstractModel)):
            continue
        if inspect.isabstract(cls) or _n_obs_args(cls) != 1:
            continue
        key = attr.lower().replace("_", "")
        if key in _NOT_SCALAR:
            continue
        if key not in _FACTORIES:
            try:
                cls()
            except Exception:  # noqa: BLE001 - needs constructor arguments (e.g. a mixture)
                continue
        out[key] = cls
    return dict(sorted(out.items()))


def _n_obs_args(cls) -> int | None:
    try:
        params = list(inspect.signature(cls.log_prob).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) - 2  # self, params


def _dist_list() -> str:
    return ", ".join(display_name(k) for k in available_dists()) or "(none)"


def display_name(canonical: str) -> str:
    return _DISPLAY.get(canonical, canonical)


def resolve_dist(name: str) -> tuple[str, type]:
    """``(canonical name, model class)`` for a ``--dist`` value; UsageError lists the valid ones."""
    dists = available_dists()
    key = name.strip().lower().replace("_", "").replace("-", "")
    key = _ALIASES.get(key, key)
    if key not in dists:
        valid = ", ".join(display_name(k) for k in dists) or "(none: mlefit.models is missing)"
        raise UsageError(f"--dist: unknown distribution {name!r}; valid: {valid}")
    return key, dists[key]


# -- data -----------------------------------------------------------------------------------
def load_data(path: str | None, column: str | None):
    """The column to fit (a ``datasets.Column``); the bundled data set when ``path`` is None."""

    if path is None:
        src, column = datasets.strikes_path(), column if column is not None else BUNDLED_COLUMN
    else:
        src = path
    try:
        col = datasets.read_column_with_lines(src, column)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if path is None:
        col = col._replace(path=f"bundled strikes.csv (Kennan 1985), column {col.name!r}")
    return col


def _where(col, i: int | None = None) -> str:
    if col.path.startswith("bundled"):
        src = col.path
        return src if i is None else f"{src}, line {int(col.lines[i])}"
    if i is None:
        sep = "" if col.path.lower().endswith(".npy") else "'"
        return f"{col.path}, column {sep}{col.name}{sep}"
    if col.path.lower().endswith(".npy"):  # no header: the column is its index
        return f"{col.path}, index {int(col.lines[i])}, column {col.name}"
    return f"{col.path}, line {int(col.lines[i])}, column {col.name!r}"


def check_support(model, canonical: str, col) -> None:
    """Raises UsageError when the data are outside the model's support, with file and line."""
    try:
        model.check_data(col.values)
    except (ValueError, TypeError) as e:
        msg = str(e)
        i = _index_in_message(msg, col.values.size)
        prefix = f"{type(model).__name__}: "
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
        where = _where(col, i)
        raise UsageError(
            f"{where}: data outside the support of {display_name(canonical)}: {msg}"
        ) from None


def _index_in_message(msg: str, n: int) -> int | None:
    m = re.search(r"(?:index|\[)\s*(\d+)", msg)
    if m and int(m.group(1)) < n:
        return int(m.group(1))
    return None


def make_model(canonical: str, cls: type, col):
    """The model for the column, its data checked (host-side, nothing compiled or written).

    UsageError for data outside the support, or data that cannot start a fit (e.g. all
    observations equal).
    """
    model = _FACTORIES[canonical](col.values) if canonical in _FACTORIES else cls()
    check_support(model, canonical, col)
    try:
        model.init(col.values)
    except ValueError as e:
        raise UsageError(f"{_where(col)}: cannot fit {display_name(canonical)}: {e}") from None
    return model

