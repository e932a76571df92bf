"""XLA flags that mlefit sets before JAX's CPU backend starts.

``--xla_cpu_enable_concurrency_optimized_scheduler=false``. With XLA:CPU's
concurrency-optimised scheduler (jaxlib 0.10.2), a vmapped program holding two batched
eigendecompositions and a batched matrix product (the standard errors of 10,000 fits at
once, ``fit_many(...).stderr``) deadlocks in most runs: every XLA thread idle and
``block_until_ready`` waiting for ever. With the scheduler off the same program ran
300 times in each of 5 processes (``tests/test_xla_flags.py`` holds a reproducer). A
compiler option per program does not help (the flag is read by the client), so it goes
into ``XLA_FLAGS``, which XLA reads once, when the backend starts: importing mlefit after a
JAX computation has run leaves the scheduler on. A flag the user set is left as it is.
"""

import os

SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def set_default_flags(environ=os.environ) -> None:
    """Adds ``SCHEDULER_FLAG=false`` to ``environ["XLA_FLAGS"]`` unless it names the flag."""
    flags = environ.get("XLA_FLAGS", "")
    if SCHEDULER_FLAG not in flags:
        environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_FLAG}=false".strip()
