"""What a fit shows: labelled intervals, the parameter table, the text and HTML summary."""

from __future__ import annotations

import html
import math

import numpy as np

from ._inference import (
    _check_kind,
    _check_level,
    _flat_params,
    _indices_of,
    _normal_quantile,
    _require_single,
    expected_information_of,
    flat_names_of,
    inference_of,
    n_params,
    param_names_of,
    param_order_of,
    wald_confint,
)
from ._labelled import LabelledArray
from ._profile import profile_confint
from ._status import Status

CONFINT_COLUMNS = ("lower", "upper")


def confint_of(res, level=0.95, method="wald", params=None, kind="observed",
               groups=None) -> LabelledArray:
    """``res.confint``: ``(..., k, 2)`` lower/upper bounds in the order of ``params``,
    rows labelled by parameter name and columns ``("lower", "upper")``."""
    if method == "wald":
        ci = wald_confint(res, level, params, kind, groups)
    elif method == "profile":
        ci = profile_confint(res, level, params)
    else:
        raise ValueError(f"method: expected 'wald' or 'profile', got {method!r}")
    flat = flat_names_of(res)
    names = tuple(flat[i] for i in _indices_of(res, params))
    return LabelledArray(ci, (None,) * (ci.ndim - 2) + (names, CONFINT_COLUMNS))


TABLE_COLUMNS = ("estimate", "stderr", "z", "pvalue", "ci_low", "ci_high")


def param_table(res, level: float = 0.95, kind: str = "observed", method: str = "wald"):
    """The parameter table of ``res.to_frame()`` as a :class:`LabelledArray` ``(p, 6)``.

    One row per scalar parameter in ``param_names`` order; columns ``TABLE_COLUMNS``:
    the estimate, its standard error ``sqrt(cov_jj)`` (``kind``), ``z = estimate /
    stderr``, the two-sided ``pvalue = 2 (1 - Phi(|z|))`` of ``parameter = 0``, and the
    interval of ``confint(level, method)``.
    """
    _require_single(res, "to_frame")
    _check_kind(kind)
    idx = _indices_of(res, None)
    est = np.asarray(_flat_params(res), dtype=float)[idx]
    se = np.asarray(inference_of(res, kind).stderr, dtype=float)[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    ci = np.asarray(confint_of(res, level, method, None, kind), dtype=float)
    values = np.column_stack([est, se, z, _pvalue(z), ci[:, 0], ci[:, 1]])
    return LabelledArray(values, (tuple(param_names_of(res)), TABLE_COLUMNS))



# ---------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------
def _fmt(x, width=10) -> str:
    x = float(x)
    if math.isnan(x):
        return f"{'nan':>{width}}"
    if math.isinf(x):
        return f"{'inf' if x > 0 else '-inf':>{width}}"
    return f"{x:>{width}.4g}"


def _pvalue(z):
    return np.array([math.erfc(abs(v) / math.sqrt(2.0)) if np.isfinite(v) else np.nan for v in z])


def _table(res, kind, level, max_rows, groups=None):
    _require_single(res, "summary")
    names = flat_names_of(res)
    est = np.asarray(_flat_params(res), dtype=float)
    inf = inference_of(res, kind, groups)
    se = np.asarray(inf.stderr, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    pv = _pvalue(z)
    q = _normal_quantile(level)
    notes = []
    at_bound = np.asarray(inf.at_bound)
    ident = np.asarray(inf.identified)
    finite = np.asarray(inf.hessian_finite)
    for i in range(len(names)):
        notes.append(
            "at bound" if at_bound[i]
            else "Hessian not finite" if not finite[i]
            else "no std err: Hessian not finite" if not finite.all()
            else "not identified" if not ident[i] else ""
        )
    rows = [
        (names[i], est[i], se[i], z[i], pv[i], est[i] - q * se[i], est[i] + q * se[i], notes[i])
        for i in param_order_of(res)  # rows in the order of param_names
    ]
    rows += _fixed_rows(res)
    return rows[:max_rows], max(0, len(rows) - max_rows), inf


def _fixed_rows(res) -> list:
    """Summary rows of the fixed parameters: the value, std err 0, no test."""
    fixed = res.problem.fixed
    if fixed is None:
        return []
    rows = []
    for name in fixed.names:
        v = fixed.value(name)
        labels = [name] if v.ndim == 0 else [
            f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*v.shape)
        ]
        for label, x in zip(labels, v.ravel(), strict=True):
            rows.append((label, float(x), 0.0, np.nan, np.nan, float(x), float(x), "fixed"))
    return rows


def _header(res, inf, kind):
    status = res.status
    nll_ok = np.isfinite(float(res.nll))
    items = [
        ("Model", res.model_name),
        ("n_obs", _num(res.n_obs)),
        ("Log-likelihood", f"{float(res.loglik):.6g}" if nll_ok else "nan"),
        ("Mean NLL", f"{float(res.nll):.10g}"),
        *(
            [("Penalty", f"{float(res.penalty):.6g}"), ("Objective", f"{float(res.objective):.8g}")]
            if getattr(res, "penalty", None) is not None else []
        ),
        ("AIC", f"{float(res.aic):.6g}"),
        ("BIC", f"{float(res.bic):.6g}"),
        ("Converged", str(bool(status == Status.CONVERGED))),
        ("Status", f"{status}"),
        ("Steps", str(int(res.steps)) + (" (minibatch)" if res.minibatch else "")),
        ("Gradient norm", f"{float(res.grad_norm):.3g}"),
        ("EDM", f"{float(inf.edm):.3g}"),
        ("Hessian cond.", f"{float(inf.condition_number):.3g}"),
        ("Covariance", kind),
        ("Parameters", str(n_params(res)) + (
            f" (+{len(res.problem.fixed.names)} fixed)" if res.problem.fixed is not None else ""
        )),
    ]
    return items, status


def _num(x):
    v = float(np.asarray(x))
    return str(int(v)) if v.is_integer() else f"{v:g}"


def _explanations(res, inf, status) -> list[str]:
    out = [f"Status: {status} ({status.message})."]
    names = flat_names_of(res)
    at_bound = np.asarray(inf.at_bound)
    nonfinite = [names[i] for i in np.flatnonzero(~np.asarray(inf.hessian_finite))]
    not_id = [] if nonfinite else [
        names[i] for i in np.flatnonzero(~np.asarray(inf.identified) & ~at_bound)
    ]
    bound = [names[i] for i in np.flatnonzero(at_bound)]
    if nonfinite:
        which = ", ".join(nonfinite[:10]) + (" ..." if len(nonfinite) > 10 else "")
        out.append(
            f"The Hessian of the NLL has NaN or inf entries in the rows of {which}: no "
            "standard errors (NaN). The model is not shown to be unidentified; its second "
            "derivatives are not finite at the estimate (e.g. an infinite constant such as "
            "+-inf cut points: write them as finite limits or with jnp.where). "
            "covariance('opg') needs first derivatives only."
        )
    if expected_information_of(res.problem) is not None:
        out.append(
            f"{res.model_name} has a non-smooth likelihood: standard errors use its expected "
            "(Fisher) information, not the observed Hessian."
        )
    if res.problem.penalty is not None:
        out.append(
            "Penalised fit: Log-likelihood, AIC and BIC exclude the penalty; std errs are "
            "the inverse Hessian of the penalised objective (MAP curvature), not the "
            "sampling covariance of the penalised estimator."
        )
    if (not bool(inf.positive_definite) and not nonfinite) or not_id:
        which = ", ".join(not_id[:10]) + (" ..." if len(not_id) > 10 else "")
        out.append(
            "The Hessian of the NLL is not positive definite"
            + (f": {which} not identified (std err NaN)." if not_id else ".")
        )
    if bound:
        out.append(
            f"At a bound: {', '.join(bound[:10])} (std err NaN: the Wald approximation does not "
            "hold on a boundary; use confint(method='profile'))."
        )
    if res.minibatch:
        out.append("Inference was computed full-batch over the data at the final iterate.")
    return out


def summary_of(
    res, kind: str = "observed", level: float = 0.95, max_rows: int = 50, groups=None
) -> str:
    """``res.summary()``: a text table in the manner of statsmodels and iminuit."""
    _check_kind(kind)
    level = _check_level(level)
    rows, more, inf = _table(res, kind, level, max_rows, groups)
    items, status = _header(res, inf, kind)
    width = 92
    lines = ["mlefit fit result".center(width), "=" * width]
    half = (len(items) + 1) // 2
    left, right = items[:half], items[half:]
    for k in range(half):
        a = f"{left[k][0] + ':':<16}{left[k][1]:<28}"
        b = f"{right[k][0] + ':':<16}{right[k][1]}" if k < len(right) else ""
        lines.append((a + b).rstrip())
    lines.append("=" * width)
    lo, hi = f"[{(1 - level) / 2:.3g}", f"{(1 + level) / 2:.3g}]"
    name_w = max([9] + [len(r[0]) for r in rows])
    lines.append(
        f"{'':<{name_w}} {'estimate':>10} {'std err':>10} {'z':>10} {'P>|z|':>10} "
        f"{lo:>10} {hi:>10}"
    )
    lines.append("-" * max(width, name_w + 67))
    for name, e, s, zz, pv, a, b, note in rows:
        line = f"{name:<{name_w}} {_fmt(e)} {_fmt(s)} {_fmt(zz)} {_fmt(pv)} {_fmt(a)} {_fmt(b)}"
        lines.append(line + (f"  ({note})" if note else ""))
    if more:
        lines.append(f"... {more} more parameters (summary(max_rows=...) to show them)")
    lines.append("=" * width)
    lines.extend(_explanations(res, inf, status))
    return "\n".join(lines)


def html_of(res, kind: str = "observed", level: float = 0.95, max_rows: int = 50) -> str:
    """``res._repr_html_``: the summary as an HTML table."""
    if res.batch_shape:
        return f"<pre>{html.escape(repr(res))}</pre>"
    rows, more, inf = _table(res, kind, level, max_rows)
    items, status = _header(res, inf, kind)
    e = html.escape
    head = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(str(v))}</td></tr>"
                   for k, v in items)
    cols = ["", "estimate", "std err", "z", "P&gt;|z|",
            f"[{(1 - level) / 2:.3g}", f"{(1 + level) / 2:.3g}]", ""]
    body = "".join(
        "<tr>" + f"<td>{e(r[0])}</td>" + "".join(f"<td>{_fmt(v, 0).strip()}</td>" for v in r[1:7])
        + f"<td>{e(r[7])}</td></tr>"
        for r in rows
    )
    if more:
        body += f"<tr><td colspan=8>... {more} more parameters</td></tr>"
    notes = "".join(f"<p>{e(s)}</p>" for s in _explanations(res, inf, status))
    colour = "#c00" if status != Status.CONVERGED else "#080"
    return (
        f"<div><p><b>mlefit fit result</b> <span style='color:{colour}'>{e(str(status))}</span>"
        f"</p><table>{head}</table><table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>"
        f"{body}</table>{notes}</div>"
    )

