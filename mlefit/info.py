"""Information measures and the losses they justify: entropy, cross-entropy, KL, NLL losses.

Discrete distributions lie along ``axis`` (default the last) and are given as
probabilities, or as unnormalised logits with ``logits=True`` (then ``softmax`` is
implied and ``log_softmax`` used, which is exact where probabilities would underflow).
Results are in nats; ``base=2`` gives bits. ``0 log 0 = 0`` throughout.

The identities the library rests on (tested in ``tests/test_identities.py``)::

    cross_entropy(p, q) = kl_divergence(p, q) + entropy(p),   kl_divergence(p, q) >= 0
    mean NLL of a Bernoulli model = binary_cross_entropy(logits, y)
    mean NLL of a categorical model = categorical_cross_entropy(logits, labels)
    mean NLL of N(pred, scale^2) = mse / (2 scale^2) + log(2 pi scale^2) / 2

so minimising the NLL of the data is minimising the cross-entropy (and the KL divergence)
from the empirical distribution to the model.

Losses take a ``reduction``: ``"mean"`` (default, the seed's ``-(1/m) sum_i ...``),
``"sum"`` or ``"none"`` (one value per observation).
Probabilities are checked (non-negative, summing to 1) when the inputs are concrete
arrays; inside ``jit`` they are not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import optax
from jax.scipy.special import entr, rel_entr, xlogy

__all__ = [
    "entropy",
    "binary_entropy",
    "cross_entropy",
    "kl_divergence",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "gaussian_nll",
    "mse",
]

_REDUCTIONS = ("mean", "sum", "none")


def _concrete(x) -> np.ndarray | None:
    """The value as NumPy when known on the host (not a tracer, not a global array)."""
    if isinstance(x, jax.core.Tracer):
        return None
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return np.asarray(x)


def _index(i) -> list[int]:
    return [int(j) for j in i]


def _check_probs(name: str, p, axis: int) -> None:
    a = _concrete(p)
    if a is None or a.size == 0:
        return
    a = a.astype(np.float64)
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        i = np.unravel_index(int(np.argmax((a < 0) | ~np.isfinite(a))), a.shape)
        raise ValueError(
            f"{name}: probabilities must be finite and >= 0, but "
            f"{name}{_index(i)} = {a[i].item()!r}; pass logits=True for unnormalised "
            "log-probabilities."
        )
    s = np.sum(a, axis=axis)
    # float32 inputs sum with about 1e-7 relative error per term.
    tol = 1e-6 if a.dtype == np.float64 and np.asarray(p).dtype == np.float64 else 1e-4
    bad = np.abs(s - 1.0) > tol
    if np.any(bad):
        if np.ndim(bad):
            i = np.unravel_index(int(np.argmax(bad)), bad.shape)
            where, total = f" at index {_index(i)}", float(s[i])
        else:
            where, total = "", float(s)
        raise ValueError(
            f"{name}: probabilities must sum to 1 along axis {axis}, but they sum to "
            f"{total!r}{where}; normalise them, or pass logits=True."
        )


def _in_base(h, base):
    if base is None:
        return h
    if not (np.isscalar(base) and base > 0 and base != 1):
        raise ValueError(f"base: must be a positive number other than 1 (e.g. 2), got {base!r}")
    return h / jnp.log(jnp.asarray(base, jnp.result_type(h)))


def _reduce(values, reduction: str):
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    if reduction == "none":
        return values
    raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _p_log_q(logp, logq):
    """``p log q`` from log-probabilities, with ``0 log q = 0`` even for ``q = 0``
    (a ``-inf`` logit) and no NaN in its gradient."""
    mask = logp > -jnp.inf
    return jnp.where(mask, jnp.exp(logp) * jnp.where(mask, logq, 0.0), 0.0)


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))


def entropy(p, *, logits: bool = False, base=None, axis: int = -1) -> jax.Array:
    """Shannon entropy ``H(p) = -sum_k p_k log p_k`` of discrete distributions along ``axis``.

    ``0 log 0 = 0`` (``jax.scipy.special.entr``). With ``logits=True``, ``p`` holds logits
    and ``H = -sum_k softmax_k log_softmax_k``.

    Args:
        p: probabilities (or logits) with the outcomes along ``axis``.
        logits: ``p`` holds logits.
        base: logarithm base (``2`` for bits); default nats.
        axis: the outcome axis.

    Returns:
        The entropy, with ``axis`` removed.

    Example:
        >>> float(entropy([0.5, 0.5], base=2))
        1.0
    """
    p = _float(p)
    if logits:
        logq = jax.nn.log_softmax(p, axis=axis)
        h = -jnp.sum(_p_log_q(logq, logq), axis=axis)
    else:
        _check_probs("p", p, axis)
        h = jnp.sum(entr(p), axis=axis)
    return _in_base(h, base)


def binary_entropy(p, *, logits: bool = False, base=None) -> jax.Array:
    """Entropy of a Bernoulli(p) trial, ``H(p) = -p log p - (1 - p) log(1 - p)`` (elementwise).

    Maximal, ``log 2`` (one bit), at ``p = 1/2``; ``0`` at ``p`` in {0, 1}. With
    ``logits=True``, ``p`` holds ``logit(p)`` and
    ``H = -sigmoid(l) log_sigmoid(l) - sigmoid(-l) log_sigmoid(-l)``.

    Example:
        >>> float(binary_entropy(0.5, base=2))
        1.0
    """
    p = _float(p)
    if logits:
        pos, neg = jax.nn.log_sigmoid(p), jax.nn.log_sigmoid(-p)
        h = -(_p_log_q(pos, pos) + _p_log_q(neg, neg))
    else:
        a = _concrete(p)
        if a is not None and np.any(~((a >= 0) & (a <= 1))):
            i = np.unravel_index(int(np.argmax(~((a >= 0) & (a <= 1)))), a.shape)
            raise ValueError(
                f"p: a probability must lie in [0, 1], but p{_index(i)} = {a[i].item()!r}"
            )
        h = entr(p) + entr(1 - p)
    return _in_base(h, base)


def cross_entropy(p, q, *, logits: bool = False, base=None, axis: int = -1) -> jax.Array:
    """Cross-entropy ``H(p, q) = -sum_k p_k log q_k`` of ``q`` relative to ``p``, along ``axis``.

    ``0 log q = 0`` for any ``q`` (``xlogy``); ``+inf`` where ``p_k > 0 = q_k``.
    ``H(p, q) = KL(p || q) + H(p)``: with ``p`` the empirical distribution of the data
    and ``q`` the model, it is the mean NLL. With ``logits=True`` both ``p`` and ``q``
    hold logits (``q`` enters through ``log_softmax``).

    Example:
        >>> round(float(cross_entropy([1.0, 0.0], [0.5, 0.5], base=2)), 6)
        1.0
    """
    p, q = _float(p), _float(q)
    if logits:
        logp, logq = jax.nn.log_softmax(p, axis=axis), jax.nn.log_softmax(q, axis=axis)
        h = -jnp.sum(_p_log_q(logp, logq), axis=axis)
    else:
        _check_probs("p", p, axis)
        _check_probs("q", q, axis)
        h = -jnp.sum(xlogy(p, q), axis=axis)
    return _in_base(h, base)


def kl_divergence(p, q, *, logits: bool = False, base=None, axis: int = -1) -> jax.Array:
    """Kullback-Leibler divergence ``KL(p || q) = sum_k p_k log(p_k / q_k)`` along ``axis``.

    ``>= 0``, ``0`` iff ``p = q``; terms with ``p_k = 0`` are 0, and it is ``+inf`` where
    ``p_k > 0 = q_k`` (``jax.scipy.special.rel_entr``). With ``logits=True`` both hold
    logits: ``KL = sum_k softmax(p)_k (log_softmax(p)_k - log_softmax(q)_k)``.

    Example:
        >>> float(kl_divergence([0.5, 0.5], [0.5, 0.5]))
        0.0
    """
    p, q = _float(p), _float(q)
    if logits:
        logp = jax.nn.log_softmax(p, axis=axis)
        logq = jax.nn.log_softmax(q, axis=axis)
        d = jnp.sum(_p_log_q(logp, logp) - _p_log_q(logp, logq), axis=axis)
    else:
        _check_probs("p", p, axis)
        _check_probs("q", q, axis)
        d = jnp.sum(rel_entr(p, q), axis=axis)
    return _in_base(d, base)


def binary_cross_entropy(logits, y, *, reduction: str = "mean") -> jax.Array:
    """Binary cross-entropy (log loss) of labels ``y`` in [0, 1] under ``sigmoid(logits)``.

    ``BCE = -(1/m) sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)]``, ``p_i = sigmoid(logits_i)``,
    computed as ``-y log_sigmoid(l) - (1 - y) log_sigmoid(-l)`` (optax): finite for logits
    up to ``+/-1e4`` and beyond, equal to the formula wherever that is finite. It is the
    mean NLL of a Bernoulli model with these logits.

    Args:
        logits: ``logit(P(y = 1))``, any shape.
        y: labels (0/1, or soft labels in [0, 1]) of the same shape.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Example:
        >>> round(float(binary_cross_entropy(0.0, 1.0)), 6)  # log 2
        0.693147
    """
    logits = _float(logits)
    y = jnp.asarray(y)
    if jnp.shape(y) != jnp.shape(logits):
        raise ValueError(f"y: shape {jnp.shape(y)} does not match logits shape {jnp.shape(logits)}")
    a = _concrete(y)
    if a is not None and np.any(~((a >= 0) & (a <= 1))):
        i = np.unravel_index(int(np.argmax(~((a >= 0) & (a <= 1)))), a.shape)
        raise ValueError(f"y: labels must lie in [0, 1], but y{_index(i)} = {a[i].item()!r}")
    return _reduce(optax.sigmoid_binary_cross_entropy(logits, y), reduction)


def categorical_cross_entropy(logits, labels, *, reduction: str = "mean") -> jax.Array:
    """Categorical cross-entropy of labels under ``softmax(logits)`` (classes on the last axis).

    ``CCE = -(1/m) sum_i sum_k y_ik log softmax(logits_i)_k`` through ``log_softmax``
    (optax): finite for logits up to ``+/-1e4`` and beyond. ``labels`` are either integer
    class indices (shape ``logits.shape[:-1]``) or one-hot / probability vectors (shape
    ``logits.shape``). It is the mean NLL of a categorical model with these logits.

    Example:
        >>> round(float(categorical_cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))), 6)
        1.386294
    """
    logits = _float(logits)
    labels = jnp.asarray(labels)
    if logits.ndim == 0:
        raise ValueError("logits: need the classes on the last axis, got a scalar")
    k = logits.shape[-1]
    if labels.shape == logits.shape[:-1]:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"labels: integer class indices expected for shape {labels.shape}, "
                f"got dtype {labels.dtype}"
            )
        a = _concrete(labels)
        if a is not None and np.any((a < 0) | (a >= k)):
            i = np.unravel_index(int(np.argmax((a < 0) | (a >= k))), a.shape)
            raise ValueError(
                f"labels: class indices must be in 0..{k - 1}, but labels{_index(i)} = "
                f"{a[i].item()!r}"
            )
        values = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    elif labels.shape == logits.shape:
        _check_probs("labels", labels, -1)
        values = optax.softmax_cross_entropy(logits, labels.astype(logits.dtype))
    else:
        raise ValueError(
            f"labels: shape {labels.shape} fits neither integer labels {logits.shape[:-1]} nor "
            f"one-hot labels {logits.shape} for logits of shape {logits.shape}"
        )
    return _reduce(values, reduction)


def gaussian_nll(pred, y, scale=1.0, *, reduction: str = "mean") -> jax.Array:
    """Gaussian NLL of ``y`` under ``N(pred, scale^2)``, reduced over observations.

    Per observation ``(y - pred)^2 / (2 scale^2) + log(2 pi scale^2) / 2``.

    With the default ``"mean"`` reduction it equals ``mse(pred, y) / (2 scale^2) +
    log(2 pi scale^2) / 2`` for a fixed ``scale``, so it has the argmin of the MSE
    (``jax.scipy.stats.norm.logpdf``).

    Example:
        >>> round(float(gaussian_nll(0.0, 0.0)), 6)  # log(2 pi) / 2
        0.918939
    """
    s = jnp.asarray(scale)
    a = _concrete(s)
    if a is not None and np.any(~(a > 0)):
        raise ValueError(f"scale: must be > 0, got {a.tolist()!r}")
    return _reduce(-jstats.norm.logpdf(y, pred, scale), reduction)


def mse(pred, y, *, reduction: str = "mean") -> jax.Array:
    """Mean squared error ``(1/m) sum_i (y_i - pred_i)^2``.

    Example:
        >>> float(mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0])))
        2.0
    """
    return _reduce(jnp.square(_float(y) - _float(pred)), reduction)
