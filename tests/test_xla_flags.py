"""mlefit turns XLA:CPU's concurrency-optimised scheduler off (``mlefit/_xla_flags.py``):
with it on, the program below deadlocks in most runs on jaxlib 0.10.2 (seen first as the
notebook ``04_many_fits_and_gpu`` hanging in ``fit_many(...).stderr``)."""

import os
import subprocess
import sys

from mlefit._xla_flags import SCHEDULER_FLAG, set_default_flags

# The inference of many two-parameter fits at once, reduced: two batched
# eigendecompositions and batched products. Runs in about a second when nothing hangs.
REPRODUCER = """
import mlefit
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)

def one(u, g, h):
    jac = jax.nn.sigmoid(u)
    hu = jac[:, None] * h * jac[None, :] + jnp.diag(g * jac * (1 - jac))
    d = jnp.diag(hu)
    r = hu / jnp.sqrt(d[:, None] * d[None, :])
    lam, vec = jnp.linalg.eigh(r)
    inv = (vec / lam) @ vec.T / jnp.sqrt(d[:, None] * d[None, :])
    return hu, inv, jnp.linalg.eigvalsh(0.5 * (hu + hu.T)), -inv @ (jac * g)

rng = np.random.default_rng(0)
a = rng.normal(size=(10_000, 2, 2))
h = 100 * (a @ a.transpose(0, 2, 1) + np.eye(2))
g, u = 1e-9 * rng.normal(size=(10_000, 2)), rng.normal(size=(10_000, 2))
program = jax.jit(jax.vmap(one))
for _ in range(50):
    jax.block_until_ready(program(u, g, h))
print("done")
"""


def test_flag_is_added_and_a_users_choice_kept():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    set_default_flags(env)
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {SCHEDULER_FLAG}=false"
    set_default_flags(env)  # idempotent
    assert env["XLA_FLAGS"].count(SCHEDULER_FLAG) == 1
    mine = {"XLA_FLAGS": f"{SCHEDULER_FLAG}=true"}
    set_default_flags(mine)
    assert mine["XLA_FLAGS"] == f"{SCHEDULER_FLAG}=true"
    empty: dict = {}
    set_default_flags(empty)
    assert empty["XLA_FLAGS"] == f"{SCHEDULER_FLAG}=false"


def test_importing_mlefit_sets_the_flag():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", "import os, mlefit; print(os.environ['XLA_FLAGS'])"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    assert out.stdout.strip() == f"{SCHEDULER_FLAG}=false"


def test_batched_eigendecompositions_do_not_deadlock():
    # Without the flag (mlefit not imported) this program hung in 2 of 3 runs.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    try:
        out = subprocess.run([sys.executable, "-c", REPRODUCER], env=env,
                             capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        raise AssertionError("the batched eigendecomposition program deadlocked") from None
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"
