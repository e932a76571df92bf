"""Data parallelism on JAX's own runtime: the observations sharded over a ``Mesh``.

One process, several devices: ``fit(model, data, mesh=mesh)``, or data placed by the
user with ``NamedSharding(mesh, P("obs"))``. Several processes (hosts): each loads only
its own part and calls :func:`shard_local`; every process then makes the same call
``fit(model, sharded, ...)`` and gets the same ``FitResult``.

Nothing here is a second likelihood: ``fit`` runs its one compiled kernel on sharded
arrays, XLA computes per-device partial sums of the NLL and its gradient and reduces
them across devices (an all-reduce, gloo on CPU, NCCL on GPU); parameters are
replicated. When the number of observations does not divide the number of devices,
the arrays are padded with copies of a real observation of weight zero (a zero weight
removes an observation exactly, and a real observation keeps the gradient finite).
Minibatch SGD permutes the real observations only (:class:`RowLayout`), so a sharded
fit takes the steps of the unsharded one with the same key.

Launching on several hosts (the same script everywhere; ``PROC`` = 0, 1, ...)::

    import mlefit
    mlefit.init_distributed("host0:1234", num_processes=2, process_id=PROC)  # first
    X, y = load_part(PROC)                        # this process's observations only
    data = mlefit.shard_local((X, y), mlefit.data_mesh())
    res = mlefit.fit(model, data, init=init)      # the same FitResult in every process
    if PROC == 0:
        print(res)

Plain ``jax.distributed.initialize`` works too (on CPU, first set
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``). Ready-made models
read their data with NumPy for checks and starting values, which a process cannot do
with another's rows: across processes, pass ``init=`` and a model function or Module.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._checks import check_data, check_weights, float_dtype
from ._model import AbstractModel

__all__ = ["ShardedData", "RowLayout", "data_mesh", "shard", "shard_local", "init_distributed"]


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Where the real observations sit in padded, sharded arrays (hashable, static).

    The data are ``len(counts)`` blocks; block ``b`` starts at row ``starts[b]`` and holds
    ``counts[b]`` real observations followed by padding. Observation ``i`` of the
    unpadded data (blocks concatenated in order) is row ``i - offset[b] + starts[b]``.
    """

    counts: tuple[int, ...]
    starts: tuple[int, ...]

    @property
    def n_obs(self) -> int:
        return sum(self.counts)

    def __call__(self, i):
        """Row of observation ``i`` (an integer array of any shape)."""
        if len(self.counts) == 1:
            return i + self.starts[0]
        offsets = np.cumsum((0,) + self.counts[:-1])
        block = jnp.searchsorted(jnp.asarray(offsets[1:]), i, side="right")
        shift = jnp.asarray(np.asarray(self.starts) - offsets, dtype=i.dtype)
        return i + shift[block]

    def valid(self, data: tuple) -> tuple:
        """The real observations of padded ``data``, in unpadded order."""
        rows = self(jnp.arange(self.n_obs))
        return tuple(jnp.take(a, rows, axis=0) for a in data)


class ShardedData(eqx.Module):
    """Observations sharded over a mesh, with the weights that mask their padding.

    Made by :func:`shard` or :func:`shard_local`; pass it to :func:`mlefit.fit` as the
    data. ``weights`` is ``None`` when nothing was padded and no weights were given.
    """

    data: tuple
    weights: jax.Array | None
    layout: RowLayout | None = eqx.field(static=True)

    @property
    def n_obs(self) -> int:
        """Number of real observations (padding excluded)."""
        return self.data[0].shape[0] if self.layout is None else self.layout.n_obs


def data_mesh(devices=None, axis_name: str = "obs") -> Mesh:
    """Returns a one-axis ``Mesh`` over ``devices`` (default: all devices of all processes).

    Observations are split along ``axis_name``; devices are in ``jax.devices()`` order,
    which groups each process's devices together (what :func:`shard_local` needs).

    Example:
        >>> import mlefit
        >>> mesh = mlefit.data_mesh()
        >>> mesh.axis_names
        ('obs',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: got an empty list; a mesh needs at least one device.")
    return Mesh(np.asarray(devices), (axis_name,))


def _obs_spec(mesh: Mesh) -> PartitionSpec:
    # The observation axis is split over every axis of the mesh; the rest is replicated.
    return PartitionSpec(tuple(mesh.axis_names))


def _check_mesh(mesh) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh: expected a jax.sharding.Mesh (e.g. mlefit.data_mesh()), got "
            f"{type(mesh).__name__}"
        )


def _pad_rows(a, pad: int):
    """``a`` followed by ``pad`` copies of its first row."""
    if pad == 0:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    return xp.concatenate([a, xp.repeat(a[:1], pad, axis=0)])


def _padded_weights(weights, n: int, pad: int, dtype):
    if weights is None and pad == 0:
        return None
    w = np.ones((n,), dtype) if weights is None else weights
    if pad == 0:
        return w
    xp = np if isinstance(w, np.ndarray) else jnp
    return xp.concatenate([w, xp.zeros((pad,), w.dtype)])


def shard(data, mesh: Mesh, *, weights=None) -> ShardedData:
    """Returns ``data`` split along the observation axis over the devices of ``mesh``.

    With ``n`` observations and ``D`` devices the arrays get ``ceil(n / D) * D`` rows:
    the padding repeats observation 0 with weight 0, so the weighted mean NLL
    ``-(sum_i v_i log p_i) / (sum_i v_i)`` and its gradient are those of the unpadded
    data. Every process must pass the same full ``data`` (for data split across
    processes use :func:`shard_local`).

    Args:
        data: an array or a tuple of arrays, observations on the leading axis.
        mesh: a ``jax.sharding.Mesh``; observations are split over all of its axes.
        weights: optional weight per observation.

    Example:
        >>> import numpy as np, mlefit
        >>> s = mlefit.shard(np.arange(5.0), mlefit.data_mesh())
        >>> s.n_obs
        5
    """
    _check_mesh(mesh)
    arrays = check_data(data)
    n = arrays[0].shape[0]
    dtype = float_dtype(arrays)
    weights = None if weights is None else np.asarray(check_weights(weights, n, dtype))
    n_dev = mesh.devices.size
    pad = -n % n_dev
    sharding = NamedSharding(mesh, _obs_spec(mesh))
    placed = tuple(jax.device_put(_pad_rows(a, pad), sharding) for a in arrays)
    w = _padded_weights(weights, n, pad, dtype)
    w = None if w is None else jax.device_put(w, sharding)
    layout = RowLayout((n,), (0,)) if pad else None
    return ShardedData(placed, w, layout)


def _process_blocks(sharding: NamedSharding, n_rows: int) -> dict[int, int]:
    """First global row held by each process; checks that each holds one contiguous block."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for dev, idx in sharding.devices_indices_map((n_rows,)).items():
        sl = idx[0]
        start, stop = sl.start or 0, n_rows if sl.stop is None else sl.stop
        spans.setdefault(dev.process_index, []).append((start, stop))
    starts = {}
    for p, parts in spans.items():
        parts = sorted(set(parts))
        lo, hi = parts[0][0], parts[-1][1]
        if sum(b - a for a, b in parts) != hi - lo:
            raise ValueError(
                f"mesh: the devices of process {p} are not contiguous along the observation "
                "axis, so its rows cannot form one block; build the mesh with "
                "mlefit.data_mesh() (devices in jax.devices() order)."
            )
        starts[p] = lo
    return starts


def shard_local(local_data, mesh: Mesh, *, weights=None) -> ShardedData:
    """Returns global arrays over ``mesh`` built from each process's own observations.

    Call it in every process with that process's part (any number of observations,
    at least one; trailing shapes and dtypes equal across processes). The global data are
    the parts of processes 0, 1, ... in order; each part is padded with weight-0 copies
    of its first observation to a common, device-divisible block size. Built with
    ``jax.make_array_from_process_local_data``: no process ever holds another's data.

    Args:
        local_data: this process's array or tuple of arrays.
        mesh: a mesh over the devices of all processes (:func:`data_mesh`).
        weights: optional weights of this process's observations.

    Example (run in each of two processes after :func:`init_distributed`)::

        mesh = mlefit.data_mesh()
        part = mlefit.shard_local((X_mine, y_mine), mesh)
        res = mlefit.fit(model, part, init=init)   # the same FitResult everywhere
    """
    from jax.experimental import multihost_utils

    _check_mesh(mesh)
    arrays = check_data(local_data)
    n_local = arrays[0].shape[0]
    dtype = float_dtype(arrays)
    weights = None if weights is None else np.asarray(check_weights(weights, n_local, dtype))
    counts = np.asarray(multihost_utils.process_allgather(np.asarray(n_local, np.int64)))
    counts = tuple(int(c) for c in np.atleast_1d(counts))
    n_proc = len(counts)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    if local_devices == 0:
        raise ValueError(f"mesh: has no device of process {jax.process_index()}.")
    block = math.ceil(max(counts) / local_devices) * local_devices
    pad = block - n_local
    sharding = NamedSharding(mesh, _obs_spec(mesh))
    n_rows = block * n_proc
    starts = _process_blocks(sharding, n_rows)

    def make(a):  # a: this process's block, already padded
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(sharding, a, (n_rows,) + a.shape[1:])

    placed = tuple(make(_pad_rows(a, pad)) for a in arrays)
    padded = any(c != block for c in counts)
    if weights is None and not padded:
        return ShardedData(placed, None, None)
    w = np.ones((n_local,), dtype) if weights is None else weights
    w = make(np.concatenate([w, np.zeros((pad,), w.dtype)]))
    layout = RowLayout(counts, tuple(starts[p] for p in range(n_proc))) if padded else None
    return ShardedData(placed, w, layout)


def init_distributed(
    coordinator_address: str, num_processes: int, process_id: int, *,
    cpu_collectives: str | None = "gloo", **kwargs,
) -> None:
    """Starts JAX's multi-process runtime; returns ``None``. Call it first in each process.

    ``jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)``
    after selecting the collectives CPU devices use (``gloo``; without it a multi-process
    fit on CPU fails at its first cross-process reduction). GPUs use NCCL regardless.

    Args:
        coordinator_address: ``"host:port"`` of process 0, reachable by all processes.
        num_processes: how many processes take part.
        process_id: this process's index, ``0 <= process_id < num_processes``.
        cpu_collectives: ``"gloo"`` (default), ``"mpi"``, or ``None`` to leave JAX's choice.

    Example (process ``i`` of two; all run the same script)::

        mlefit.init_distributed("10.0.0.1:1234", num_processes=2, process_id=i)
    """
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes: expected an int >= 1, got {num_processes!r}")
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise ValueError(
            f"process_id: expected an int in [0, {num_processes}), got {process_id!r}"
        )
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, **kwargs,
    )


def as_sharded(data, weights, mesh):
    """``(data, weights, layout)`` for ``fit``: unpacks ``ShardedData`` or shards with ``mesh``."""
    if isinstance(data, ShardedData):
        if weights is not None:
            raise ValueError(
                "weights: the data are already sharded; give the weights to "
                "mlefit.shard(..., weights=w) or mlefit.shard_local(..., weights=w)."
            )
        return data.data, data.weights, data.layout
    if mesh is None:
        return data, weights, None
    s = shard(data, mesh, weights=weights)
    return s.data, s.weights, s.layout


def model_data(model, data: tuple, layout) -> tuple:
    """The data a ready-made model's ``init``/``check_data`` see: padding removed."""

    if layout is None or not isinstance(model, AbstractModel):
        return data
    return layout.valid(data)
