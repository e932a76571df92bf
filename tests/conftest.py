"""Test configuration: float64 for the whole suite (float32 tests opt out explicitly).

The persistent compilation cache is off for the suite (``MLEFIT_CACHE_DIR=0``, set here,
before anything imports mlefit, and inherited by every subprocess a test starts): tests
never write into the user's cache, and every test compiles what it fits. The tests of the
cache give their subprocesses a temporary ``MLEFIT_CACHE_DIR``.

The suite compiles at LLVM -O0 without LLVM's expensive passes, with XLA:CPU's classic
fusion emitters (``XLA_FLAGS``, inherited by subprocesses): most of its time is XLA
compiling small programs. These options change how fast the machine code runs (and at most
where multiply-adds are fused), not what it computes; mlefit's fits already compile with
the classic emitters (``mlefit._compiled.compiler_options``), and the programs for which
mlefit picks an LLVM level itself (a small fit, subsampled Newton) keep it. The benchmarks
run at XLA's defaults. (Whole suite, 2 workers: -O0 355 s against 388-444 s; the emitters
cut the implicit, gof and README tests from 99.5 s to 72 s.)
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["MLEFIT_CACHE_DIR"] = "0"
_FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                 "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402

import mlefit  # noqa: E402, F401  (sets XLA_FLAGS before any test computation starts JAX)

jax.config.update("jax_enable_x64", True)
