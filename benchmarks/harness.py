"""Timing protocol, result rows and the markdown table of the benchmark suite.

Every tool is timed the same way, in the same process run:

- ``first call``: wall time of the first call on data set A, everything included
  (for JAX tools: tracing and compilation);
- ``steady``: median over ``reps`` further calls on NEW data of the same shape
  (data sets B and A alternately, B first), results blocked on;
- ``compile``: ``first - steady`` for JAX tools (what a user waits for beyond running),
  blank for tools that do not compile;
- ``mean NLL``: recomputed by the problem's own NumPy float64 formula from the
  parameters each tool returned for data set A, so all tools are compared on one
  formula; ``dNLL`` is its excess over the best tool, relative to the best.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class Outcome:
    """What one call of a tool returns: parameters in the problem's canonical form."""

    params: Any
    steps: int | str | None = None
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Row:
    problem: str
    tool: str
    compile_s: float | None
    first_s: float
    steady_s: float
    nll: float | None
    steps: Any
    note: str = ""
    is_ref: bool = False  # the mlefit row the ratios refer to
    dnll: float | None = None
    ratio: float | None = None
    runs: int = 1


def block(x):
    """Waits for JAX arrays inside ``x`` (no-op for NumPy values)."""
    try:
        import jax

        jax.block_until_ready(x)
    except Exception:  # noqa: BLE001 - non-JAX outputs
        pass
    return x


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t, out


def measure(
    problem: str,
    tool: str,
    run: Callable[[Any], Outcome],
    data_a: Any,
    data_b: Any,
    nll_of: Callable[[Any, Any], float] | None,
    *,
    reps: int,
    compiles: bool,
    note: str = "",
    is_ref: bool = False,
    host_data_a: Any = None,
) -> Row:
    """Times ``run`` on A (first call) then ``reps`` times on B, A, B, ... (steady)."""
    first, out = timed(lambda: run(data_a))
    times = []
    for k in range(reps):
        t, _ = timed(lambda k=k: run(data_b if k % 2 == 0 else data_a))
        times.append(t)
    steady = statistics.median(times) if times else first
    nll = None
    if nll_of is not None and out.params is not None:
        nll = float(nll_of(out.params, data_a if host_data_a is None else host_data_a))
    compile_s = max(first - steady, 0.0) if (compiles and times) else None
    row = Row(problem, tool, compile_s, first, steady, nll, out.steps, note, is_ref,
              runs=1 + reps)
    row.extra = out.extra  # type: ignore[attr-defined]
    row.params = out.params  # type: ignore[attr-defined] - the first call's (data set A)
    print(f"  {tool:42s} first {first:8.3f}s  steady {steady:8.4f}s  "
          f"nll {nll if nll is None else f'{nll:.12g}'}  steps {out.steps}", flush=True)
    return row


def finish(rows: list[Row]) -> list[Row]:
    """Fills ``dnll`` (relative excess over the best NLL) and ``ratio`` (steady / mlefit's)."""
    by_problem: dict[str, list[Row]] = {}
    for r in rows:
        by_problem.setdefault(r.problem, []).append(r)
    for group in by_problem.values():
        nlls = [r.nll for r in group if r.nll is not None and np.isfinite(r.nll)]
        best = min(nlls) if nlls else None
        ref = next((r for r in group if r.is_ref), None)
        for r in group:
            if best is not None and r.nll is not None:
                r.dnll = (r.nll - best) / max(abs(best), 1e-300)
            if ref is not None and ref.steady_s > 0:
                r.ratio = r.steady_s / ref.steady_s
    return rows


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def _fmt_time(x):
    if x is None:
        return ""
    return f"{x:.3f}" if x >= 0.1 else f"{x:.4f}"


def markdown_table(rows: list[Row]) -> str:
    head = ("| problem | tool | compile s | first call s | steady s | mean NLL | dNLL (rel) "
            "| steps | steady / mlefit | note |")
    sep = "|" + "---|" * 10
    lines = [head, sep]
    for r in rows:
        tool = f"**{r.tool}**" if r.is_ref else r.tool
        dn = "" if r.dnll is None else ("0" if r.dnll == 0 else f"{r.dnll:.1e}")
        lines.append(
            f"| {r.problem} | {tool} | {_fmt_time(r.compile_s)} | {_fmt_time(r.first_s)} | "
            f"{_fmt_time(r.steady_s)} | {_fmt(r.nll, '.12g')} | {dn} | "
            f"{'' if r.steps is None else r.steps} | {_fmt(r.ratio, '.2f')} | {r.note} |"
        )
    return "\n".join(lines)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (other processes compete for the cores)."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def environment() -> str:
    import jax

    try:
        with open("/proc/cpuinfo") as fh:
            model = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    load = load_average()
    return (
        f"jax {jax.__version__} on {jax.default_backend()} ({devices}); {model}; "
        f"{os.cpu_count()} logical CPUs; Python {platform.python_version()}; "
        f"load average at the end {load}"
    )


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM), bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
