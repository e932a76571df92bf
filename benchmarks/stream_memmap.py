"""Streaming SGD over a float32 .npy file larger than memory: throughput and peak RSS.

    python benchmarks/stream_memmap.py            # 20 GB in /tmp, deleted at the end
    python benchmarks/stream_memmap.py --gb 1     # a quick run

Writes ``X.npy`` (n x 100, float32) and ``y.npy`` (logistic labels, float32) in a child
process, evicts them from the page cache (``posix_fadvise(DONTNEED)``, so the first pass
reads the disk), then runs ``mlefit.fit(Logistic(), ArrayStream(("X.npy", "y.npy")),
batch_size=8192, optimizer=optax.adam(1e-3), epochs=2)`` in float32. Every pass over the
data is timed from the source's side (a subclass of ``ArrayStream`` notes when each pass
starts and ends): two SGD epochs, then the full-data NLL and gradient the fit reports.
Peak resident memory is the process's ``ru_maxrss`` (the writer is another process) and a
sampler of ``VmRSS`` every 0.1 s. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

D = 100
ROWS_PER_WRITE = 250_000  # 100 MB of X per write


def _evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write(folder: str, n: int, seed: int = 0) -> None:
    """Writes X.npy and y.npy chunk by chunk (no memory map: the writer stays small)."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(0.0, 1.0 / np.sqrt(D), D).astype(np.float32)
    np.save(os.path.join(folder, "beta.npy"), beta)
    fx = open(os.path.join(folder, "X.npy"), "wb")
    fy = open(os.path.join(folder, "y.npy"), "wb")
    for f, shape in ((fx, (n, D)), (fy, (n,))):
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
    for start in range(0, n, ROWS_PER_WRITE):
        m = min(ROWS_PER_WRITE, n - start)
        X = rng.standard_normal((m, D), dtype=np.float32)
        eta = X @ beta + 0.25
        y = (rng.random(m, dtype=np.float32) < 1 / (1 + np.exp(-eta))).astype(np.float32)
        fx.write(X.tobytes())
        fy.write(y.tobytes())
    fx.close()
    fy.close()
    for name in ("X.npy", "y.npy"):
        _evict(os.path.join(folder, name))


class _RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stop:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.1)


def run_fit(folder: str, batch_size: int, epochs: int) -> dict:
    import jax
    import optax

    import mlefit

    passes = []

    class TimedStream(mlefit.ArrayStream):
        def chunks(self, rows, order="none", key=None, epoch=0):
            t0, c0 = time.perf_counter(), time.process_time()
            yield from super().chunks(rows, order, key, epoch)
            name = "sgd epoch" if order != "none" else "full pass"
            passes.append((name, time.perf_counter() - t0, time.process_time() - c0, rows))

    sampler = _RssSampler()
    sampler.start()
    stream = TimedStream((os.path.join(folder, "X.npy"), os.path.join(folder, "y.npy")))
    t0 = time.perf_counter()
    res = mlefit.fit(mlefit.models.Logistic(), stream, batch_size=batch_size,
                     optimizer=optax.adam(1e-3), epochs=epochs)
    jax.block_until_ready(res.params)
    total = time.perf_counter() - t0
    sampler.stop = True
    sampler.join()
    beta = np.load(os.path.join(folder, "beta.npy"))
    err = float(np.max(np.abs(np.asarray(res.params["coef"]) - beta)))
    return {
        "n": stream.n_obs, "passes": passes, "total_s": total,
        "nll": float(res.nll), "grad_norm": float(res.grad_norm), "coef_max_err": err,
        "status": str(res.optimizer_status), "steps": int(res.steps),
        "history": [float(h) for h in res.history],
        "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "sampled_rss_gb": sampler.peak / 2**30,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=20.0, help="size of X.npy in GB (1e9 bytes)")
    ap.add_argument("--dir", default="/tmp/mlefit_stream_bench")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = int(args.gb * 1e9 / (4 * D))
    if args.write_only:
        write(args.dir, n)
        return
    os.makedirs(args.dir, exist_ok=True)
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write-only", "--gb", str(args.gb),
                        "--dir", args.dir], check=True)
        t_write = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(args.dir, f)) for f in ("X.npy", "y.npy"))
        r = run_fit(args.dir, args.batch_size, args.epochs)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(f"data: {r['n']:,} observations x {D} float32 features, files {size / 1e9:.2f} GB "
          f"(written in {t_write:.0f} s, then evicted from the page cache)")
    print(f"batch {args.batch_size}, Adam(1e-3), {args.epochs} epochs, {r['steps']:,} steps; "
          f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'pass':<12}{'chunk rows':>12}{'wall s':>9}{'CPU s':>8}{'obs/s':>13}{'MB/s':>8}")
    for name, sec, cpu, rows in r["passes"]:
        print(f"{name:<12}{rows:>12,}{sec:>9.1f}{cpu:>8.1f}{r['n'] / sec:>13,.0f}"
              f"{size / sec / 1e6:>8.0f}")
    print(f"total fit: {r['total_s']:.1f} s; final nll {r['nll']:.6f}, grad max-norm "
          f"{r['grad_norm']:.2e}, status {r['status']}, max |coef - true| {r['coef_max_err']:.3f}")
    print(f"epoch nll history: {', '.join(f'{h:.6f}' for h in r['history'])}")
    print(f"peak RSS: ru_maxrss {r['ru_maxrss_gb']:.2f} GiB, sampled VmRSS "
          f"{r['sampled_rss_gb']:.2f} GiB (limit 2 GB)")
    assert r["ru_maxrss_gb"] < 2.0 * 1e9 / 2**30, "peak RSS above 2 GB"


if __name__ == "__main__":
    main()
