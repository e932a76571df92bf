"""Test configuration: float64 for the whole suite (float32 tests opt out explicitly).

The persistent compilation cache is off for the suite (``MLEFIT_CACHE_DIR=0``, set here,
before anything imports mlefit, and inherited by every subprocess a test starts): tests
never write into the user's cache, and every test compiles what it fits. The tests of the
cache give their subprocesses a temporary ``MLEFIT_CACHE_DIR``.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["MLEFIT_CACHE_DIR"] = "0"

import jax  # noqa: E402

import mlefit  # noqa: E402, F401  (sets XLA_FLAGS before any test computation starts JAX)

jax.config.update("jax_enable_x64", True)
