"""Test configuration: float64 for the whole suite (float32 tests opt out explicitly)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
