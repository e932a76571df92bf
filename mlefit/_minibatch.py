"""Minibatch SGD: epochs of shuffled batches in ``lax.scan``, one likelihood kernel.

Epoch ``e`` visits every observation once, in the order drawn from ``fold_in(key, e)``;
the last batch is padded with zero-weight entries so every batch shares one compiled
step. The same step serves in-memory, sharded and streamed minibatch fits, and a fit
run in chunks of epochs (progress, checkpoints) takes the steps of one run.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._constraints import constrain
from ._likelihood import mean_nll
from ._objective import objective
from ._status import Status
from ._trees import all_finite as _all_finite
from ._trees import max_norm as _max_norm

__all__ = [
    "epoch_batches", "sgd_step", "MinibatchState", "minibatch_init", "minibatch_epochs",
    "minibatch_finish", "minibatch_history_dtype", "minibatch_loop",
]


def _where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def epoch_batches(key, epoch, n: int, batch_size: int, dtype=jnp.float32):
    """Batches of epoch ``epoch``: ``(idx, mask)``, each ``(n_batches, batch_size)``.

    ``idx`` is a permutation of ``range(n)`` drawn from ``fold_in(key, epoch)``, padded
    with index 0 where ``mask`` is 0, so every observation appears once per epoch.
    """
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch_size)
    mask = jnp.concatenate([jnp.ones((n,), dtype), jnp.zeros((pad,), dtype)])
    return idx, mask.reshape(n_batches, batch_size)


def sgd_step(logp, transforms, opt, carry, obs: tuple, w):
    """One minibatch step on the batch ``(obs, w)``; ``carry = (u, opt_state, bad)``.

    Returns ``(carry, value * sum(w))``. A batch whose weights are all zero (padding) is
    skipped: its mean NLL is 0/0. A non-finite value, gradient or update freezes the fit
    and sets ``bad``. ``opt`` must accept extra args (``optax.with_extra_args_support``).
    Shared by in-memory, sharded and streamed minibatch fits: one step, one kernel.
    """
    u, state, bad = carry
    f = lambda v: mean_nll(logp, constrain(v, transforms), obs, w)  # noqa: E731
    value, grad = jax.value_and_grad(f)(u)
    wsum = jnp.sum(w)
    updates, new_state = opt.update(grad, state, u, value=value, grad=grad, value_fn=f)
    new_u = optax.apply_updates(u, updates)
    take = wsum > 0
    ok = ~bad & _all_finite(value, grad, new_u)
    u, state = _where(take & ok, (new_u, new_state), (u, state))
    return (u, state, bad | (take & ~ok)), jnp.where(take, value * wsum, 0.0)


class MinibatchState(NamedTuple):
    """A minibatch fit between epochs (what a checkpoint stores, with the key)."""

    u: Any
    opt_state: Any
    bad: jax.Array
    history: jax.Array  # mean NLL of each epoch; NaN for epochs not run yet


def minibatch_init(opt, u0, epochs: int, dtype) -> MinibatchState:
    opt = optax.with_extra_args_support(opt)
    return MinibatchState(u0, opt.init(u0), jnp.asarray(False), jnp.full((epochs,), jnp.nan, dtype))


def minibatch_epochs(
    logp,
    transforms,
    opt,
    state: MinibatchState,
    data,
    weights,
    key,
    batch_size: int,
    start,
    stop,
    layout=None,
) -> MinibatchState:
    """Runs epochs ``start <= e < stop`` of a minibatch fit from ``state``.

    Epoch ``e`` visits every observation once, in the order ``epoch_batches(key, e)``,
    so a fit run in chunks of epochs (checkpointing) takes the steps of one run.
    ``start``/``stop`` may be traced: one compiled program serves every chunk.
    ``layout`` (see ``mlefit.shard``) maps observation ``i`` of the unpadded data to its
    row in padded, sharded ``data``: the permutation covers the real observations only,
    so a sharded fit takes the steps of the unsharded one.
    """
    opt = optax.with_extra_args_support(opt)
    n = data[0].shape[0] if layout is None else layout.n_obs
    n_rows = data[0].shape[0]
    w_full = jnp.ones((n_rows,), jnp.result_type(float)) if weights is None else weights

    def step(c, batch):
        idx, mask = batch
        obs = tuple(a[idx] for a in data)
        return sgd_step(logp, transforms, opt, c, obs, mask * w_full[idx])

    def epoch(e, s: MinibatchState) -> MinibatchState:
        idx, mask = epoch_batches(key, e, n, batch_size, w_full.dtype)
        if layout is not None:
            idx = layout(idx)
        (u, opt_state, bad), weighted = jax.lax.scan(step, (s.u, s.opt_state, s.bad), (idx, mask))
        value = jnp.sum(weighted) / jnp.sum(w_full)
        return MinibatchState(u, opt_state, bad, s.history.at[e].set(value.astype(s.history.dtype)))

    _, state = jax.lax.while_loop(
        lambda c: c[0] < stop,
        lambda c: (c[0] + 1, epoch(c[0], c[1])),
        (jnp.asarray(start, jnp.int32), state),
    )
    return state


def minibatch_finish(logp, transforms, state: MinibatchState, data, weights, tol, steps):
    """Full-data NLL and gradient at the last iterate, and the status of a minibatch fit."""
    value, grad = jax.value_and_grad(objective(logp, transforms, data, weights))(state.u)
    finite = _all_finite(value, grad)
    status = jnp.where(
        state.bad | ~finite,
        Status.NON_FINITE,
        jnp.where(_max_norm(grad) <= tol, Status.CONVERGED, Status.MAX_STEPS),
    ).astype(jnp.int32)
    return state.u, value, grad, jnp.asarray(steps, jnp.int32), status, state.history


def minibatch_history_dtype(u0, weights):
    return jnp.result_type(
        *jax.tree_util.tree_leaves(u0), jnp.result_type(float) if weights is None else weights
    )


def minibatch_loop(
    logp,
    transforms,
    opt,
    u0,
    data,
    weights,
    key,
    batch_size: int,
    epochs: int,
    tol,
    layout=None,
):
    """Minibatch optimisation: ``epochs`` passes, each a fresh permutation from ``key``.

    Every observation is used exactly once per epoch; the last batch is padded with
    zero-weight entries so all batches share one compiled step.
    """
    state = minibatch_init(opt, u0, epochs, minibatch_history_dtype(u0, weights))
    state = minibatch_epochs(
        logp, transforms, opt, state, data, weights, key, batch_size, 0, epochs, layout
    )
    n = data[0].shape[0] if layout is None else layout.n_obs
    steps = epochs * -(-n // batch_size)
    return minibatch_finish(logp, transforms, state, data, weights, tol, steps)

