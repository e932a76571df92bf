"""Sources of data larger than memory: :class:`ArrayStream` (arrays or ``.npy`` files
read chunk by chunk, never whole) and :func:`batches` of an iterable of batches.

A source yields fixed-size chunks (the last padded with zero-weight copies of a real
row, so nothing recompiles), in order or shuffled from a key; NaN or inf is named by its
row in the stream, its column and its chunk. ``fit`` takes only these as streams, never
a bare iterable (:func:`is_source`).

Memory: a ``.npy`` file (or a memmap from ``np.load(path, mmap_mode="r")``) is read with
``pread`` into one chunk-sized buffer at a time, so the process holds a few chunks, not
the file (pages of a memory map would count in its resident memory).
"""

from __future__ import annotations

import collections.abc
import math
import mmap
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import _bad_rows, check_data, check_real
from ._minibatch import epoch_batches

__all__ = ["ArrayStream", "batches", "is_source"]

# Default chunk: about this many bytes of observations.
_CHUNK_BYTES = 32 * 2**20
_SHUFFLES = ("chunks", "global", "none")



# -- columns: where the rows come from -------------------------------------------------
class _FileColumn:
    """Rows of a C-ordered ``.npy`` file (or raw file at ``offset``), read with ``pread``."""

    in_memory = False

    def __init__(self, path, offset: int, shape: tuple, dtype):
        self.path, self.offset = str(path), int(offset)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        self._fd = os.open(self.path, os.O_RDONLY)
        self._map = None

    @classmethod
    def from_npy(cls, path, name: str):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no file at {str(path)!r}")
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read(f)
            except ValueError as e:
                raise ValueError(f"{name}: {str(path)!r} is not a .npy file ({e})") from e
            offset = f.tell()
        if fortran and len(shape) > 1:
            raise ValueError(
                f"{name}: {str(path)!r} is stored in Fortran order; rows must be contiguous: "
                "save it with np.save(path, np.ascontiguousarray(a))."
            )
        return cls(path, offset, shape, dtype)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = _aligned_empty((stop - start,) + self.shape[1:], self.dtype)
        view = memoryview(out).cast("B")
        pos, done = self.offset + start * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], pos + done)
            if got <= 0:
                raise OSError(f"{self.path!r}: unexpected end of file at byte {pos + done}")
            done += got
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        # Random rows (global shuffle): through a memory map, pages cached by the kernel.
        if self._map is None:
            self._map = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        return np.asarray(self._map[rows])

    def __del__(self):
        try:
            os.close(self._fd)
        except (OSError, AttributeError, TypeError):
            pass


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised array at a 64-byte boundary: the CPU device then uses it in place
    (``device_put`` copies a misaligned buffer: 25 ms of CPU per 36 MB chunk, measured)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size].view(dtype).reshape(shape)


class _ArrayColumn:
    """Rows of an array in memory (anything NumPy can slice)."""

    def __init__(self, a):
        self.a = a
        self.shape, self.dtype = tuple(a.shape), np.dtype(a.dtype)
        # A NumPy array in RAM is checked whole up front; a partial memory map (or another
        # sliceable object) block by block as it is read, like a file.
        self.in_memory = isinstance(a, np.ndarray) and not isinstance(a, np.memmap)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.a[start:stop])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.a[rows])


def _column(x, name: str):
    col = _open_column(x, name)
    check_real(col.dtype, name)
    return col


def _open_column(x, name: str):
    if isinstance(x, (str, os.PathLike)):
        return _FileColumn.from_npy(x, name)
    if isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.filename \
            and x.flags.c_contiguous:
        # A whole-file memory map (np.load(path, mmap_mode="r")): read its file instead.
        return _FileColumn(x.filename, x.offset, x.shape, x.dtype)
    if isinstance(x, jax.Array):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{name}: expected a numeric array or a .npy path, got dtype {x.dtype}")
    return _ArrayColumn(x)


def _first_non_finite(a: np.ndarray):
    """``(i, what, value, count)`` for the first row ``i`` of ``a`` holding NaN or inf
    (``what`` names its column or element), or ``None``. One BLAS pass (``_bad_rows``)."""
    if not np.issubdtype(a.dtype, np.inexact):
        return None
    flat = a.reshape(a.shape[0], -1)
    bad = _bad_rows(flat)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    j = int(np.argmax(~np.isfinite(flat[i])))
    what = ("" if a.ndim == 1 else f", column {j}" if a.ndim == 2
            else f", element {tuple(int(k) for k in np.unravel_index(j, a.shape[1:]))}")
    return i, what, flat[i, j], int(bad.sum())


def _raise_non_finite(name: str, a: np.ndarray, row_of, where_of) -> None:
    """Raises ``ValueError`` naming the first NaN/inf of ``a``: its global row ``row_of(i)``,
    column, and the chunk or batch ``where_of(row)`` it is in."""
    found = _first_non_finite(a)
    if found is None:
        return
    i, what, value, count = found
    row = int(row_of(i))
    raise ValueError(
        f"{name}: row {row}{what} is {value} ({where_of(row)}; {count} of the {a.shape[0]} "
        "rows checked with it hold NaN or inf); remove or impute NaN and inf values before "
        "fitting (a stream is checked as it is read)."
    )


class _Chunk(NamedTuple):
    obs: tuple  # host arrays, ``rows`` rows each (padded)
    w: np.ndarray  # weights, 0 on padding
    m: int  # real rows (the first m)
    order: np.ndarray | None  # the order in which SGD visits the rows (real rows first)


def _rng(key, *words) -> np.random.Generator:
    """A NumPy generator seeded by ``key`` and ``words`` (PCG64: stable across versions)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([*np.asarray(key).ravel().tolist(), *words])


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
    m = a.shape[0]
    if m == rows:
        return a
    return np.concatenate([a, np.repeat(a[:1], rows - m, axis=0)])


class ArrayStream:
    """A source of observations read in chunks from arrays or ``.npy`` files, never whole.

    ``fit(model, ArrayStream(...), batch_size=B, optimizer=opt)`` runs minibatch SGD over
    it, ``fit(model, ArrayStream(...))`` a full-batch L-BFGS fit whose every evaluation
    streams the chunks; :func:`stream_nll`, :func:`stream_value_and_grad` and
    :func:`stream_hessian` sum over it. Iterating over it yields the chunks in order
    (tuples of arrays, or arrays for one column).

    Args:
        data: an array, a ``.npy`` path, or a tuple of them (e.g. ``("X.npy", "y.npy")``),
            observations on the leading axis. Paths and ``np.load(path, mmap_mode="r")``
            memory maps are read with ``pread`` (resident memory stays a few chunks).
        weights: optional weight per observation (an array or a ``.npy`` path).
        chunk_size: observations per chunk (default: about 32 MB of data); SGD rounds it
            up to a multiple of the batch size.
        shuffle: how SGD orders observations in each epoch (from ``fold_in(key, epoch)``):
            ``"chunks"`` (default; the chunks in random order, the rows within each chunk
            permuted on the device: sequential reads), ``"global"`` (one permutation of all
            observations: the same steps as ``fit`` on the in-memory arrays with the same
            key, but random reads, for data that fit in the page cache), ``"none"`` (in
            file order).

    Example:
        >>> import numpy as np, mlefit
        >>> s = mlefit.ArrayStream((np.ones((10, 2)), np.zeros(10)), chunk_size=4)
        >>> [x.shape[0] for x, y in s]
        [4, 4, 2]
    """

    one_shot = False  # a re-readable source (see _IterableSource)

    def __init__(self, data, *, weights=None, chunk_size: int | None = None,
                 shuffle: str = "chunks"):
        items = tuple(data) if isinstance(data, (tuple, list)) else (data,)
        if not items:
            raise ValueError("data: got an empty tuple; pass an array, a path, or a tuple.")
        names = ["data"] if len(items) == 1 else [f"data[{k}]" for k in range(len(items))]
        self._columns = tuple(_column(x, nm) for x, nm in zip(items, names, strict=True))
        self._single = not isinstance(data, (tuple, list))
        for col, nm in zip(self._columns, names, strict=True):
            if len(col.shape) == 0 or col.shape[0] == 0:
                raise ValueError(f"{nm}: needs a leading observation axis with >= 1 rows, "
                                 f"got shape {col.shape}")
        lengths = [c.shape[0] for c in self._columns]
        if len(set(lengths)) > 1:
            desc = ", ".join(f"{nm} has {n}" for nm, n in zip(names, lengths, strict=True))
            raise ValueError(f"data: the arrays must share the leading (observation) axis, "
                             f"but {desc} observations.")
        self.n_obs = lengths[0]
        self._weights = None
        if weights is not None:
            self._weights = _column(weights, "weights")
            if self._weights.shape != (self.n_obs,):
                raise ValueError(f"weights: expected shape ({self.n_obs},) (one per "
                                 f"observation), got {self._weights.shape}")
        if shuffle not in _SHUFFLES:
            raise ValueError(f"shuffle: expected one of {_SHUFFLES}, got {shuffle!r}")
        self.shuffle = shuffle
        row_bytes = sum(c.dtype.itemsize * math.prod(c.shape[1:]) for c in self._columns)
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
                or chunk_size < 1:
            raise ValueError(f"chunk_size: must be a positive int, got {chunk_size!r}")
        self.chunk_size = int(min(chunk_size, self.n_obs))
        floats = [c.dtype for c in self._columns if np.issubdtype(c.dtype, np.floating)]
        self._float = floats[0] if floats else np.dtype(jnp.result_type(float))
        self._names = names
        # NaN/inf: arrays in memory are checked whole now (a few ms per 100 MB); file
        # columns as each block of rows is first read (``_checked``: blocks already seen).
        self._checked: set = set()
        for col, nm in zip(self._columns, names, strict=True):
            if col.in_memory:
                _raise_non_finite(nm, col.a, lambda i: i, self._chunk_of)

    def _chunk_of(self, row: int) -> str:
        return f"chunk {row // self.chunk_size} of chunk_size {self.chunk_size}"

    def _check_rows(self, obs: tuple, row_of, where_of) -> None:
        for col, nm, a in zip(self._columns, self._names, obs, strict=True):
            if not col.in_memory:
                _raise_non_finite(nm, a, row_of, where_of)

    @property
    def shapes(self) -> list:
        """``(trailing shape, dtype)`` of each column."""
        return [(c.shape[1:], c.dtype) for c in self._columns]

    def _weights_of(self, get, m: int, where: str) -> np.ndarray:
        if self._weights is None:
            return np.ones((m,), np.dtype(jnp.result_type(float)))
        w = np.asarray(get(self._weights), self._float)
        bad = ~(np.isfinite(w) & (w >= 0))
        if bad.any():
            raise ValueError(f"weights: must be finite and non-negative; the weight of "
                             f"observation {where(int(np.argmax(bad)))} is {float(w[bad][0])!r}")
        return w

    def read(self, start: int, stop: int, where=None) -> tuple[tuple, np.ndarray]:
        """Rows ``start:stop`` of every column and their weights (host arrays).

        ``ValueError`` naming the row, column and chunk (``where(row)``, default: the
        chunk of ``chunk_size``) of the first NaN or inf in the rows.
        """
        obs = tuple(c.read(start, stop) for c in self._columns)
        if (start, stop) not in self._checked:
            self._check_rows(obs, lambda i: start + i, where or self._chunk_of)
            self._checked.add((start, stop))
        return obs, self._weights_of(lambda c: c.read(start, stop), stop - start,
                                     lambda i: start + i)

    def take(self, rows: np.ndarray, where=None) -> tuple[tuple, np.ndarray]:
        obs = tuple(c.take(rows) for c in self._columns)
        self._check_rows(obs, lambda i: rows[i], where or self._chunk_of)
        return obs, self._weights_of(lambda c: c.take(rows), len(rows), lambda i: rows[i])

    def __iter__(self):
        for start in range(0, self.n_obs, self.chunk_size):
            obs, _ = self.read(start, min(start + self.chunk_size, self.n_obs))
            yield obs[0] if self._single else obs

    def __len__(self) -> int:
        return -(-self.n_obs // self.chunk_size)

    def sample(self) -> tuple:
        return self.read(0, self.chunk_size)[0]

    def total_weight(self) -> float:
        """``W = sum_i v_i`` over the stream (``n_obs`` without weights), reading the
        weights only."""
        if self._weights is None:
            return float(self.n_obs)

        def chunk_sum(start: int, stop: int) -> float:
            w = self._weights_of(lambda c: c.read(start, stop), stop - start,
                                 lambda i: start + i)
            return float(np.sum(w))

        return sum(chunk_sum(a, min(a + self.chunk_size, self.n_obs))
                   for a in range(0, self.n_obs, self.chunk_size))

    def chunks(self, rows: int, order: str = "none", key=None, epoch: int = 0):
        """Yields :class:`_Chunk` s of ``rows`` rows (the last padded), in ``order``."""
        n = self.n_obs
        n_chunks = -(-n // rows)
        if order == "global":
            idx, _ = epoch_batches(key, epoch, n, 1)
            perm = np.asarray(idx).reshape(-1)[:n]
            for c in range(n_chunks):
                sel = perm[c * rows:(c + 1) * rows]
                obs, w = self.take(sel, lambda _, c=c: f"shuffled chunk {c} of epoch {epoch}")
                yield _pad_chunk(obs, w, rows)
            return
        seq = range(n_chunks)
        if order == "chunks":
            seq = _rng(key, epoch).permutation(n_chunks)
        for c in seq:
            c = int(c)
            obs, w = self.read(c * rows, min((c + 1) * rows, n),
                               lambda _, c=c: f"chunk {c} of {n_chunks}, {rows} rows each")
            chunk = _pad_chunk(obs, w, rows)
            if order == "chunks":
                # Rows permuted within the chunk (on the host: a device argsort of 1e5
                # keys cost 33 ms of CPU, NumPy's permutation 1.5 ms); padding stays last.
                perm = _rng(key, epoch, c).permutation(chunk.m).astype(np.int32)
                chunk = chunk._replace(order=np.concatenate(
                    [perm, np.arange(chunk.m, rows, dtype=np.int32)]))
            yield chunk


def _pad_chunk(obs, w, rows) -> _Chunk:
    m = w.shape[0]
    w = w if m == rows else np.concatenate([w, np.zeros((rows - m,), w.dtype)])
    return _Chunk(tuple(_pad(a, rows) for a in obs), w, m, None)


class _IterableSource:
    """A user's iterable of batches; each pass is an epoch.

    Every batch is padded to the first one's size (rounded up to a multiple of the SGD
    batch size), so one compiled program serves them all; SGD splits each into minibatches.
    """

    def __init__(self, source):
        self.source = source
        self.one_shot = isinstance(source, collections.abc.Iterator)
        self._first = None
        self.n_obs = None
        self.rows_read = None
        self.shuffle = "none"

    def _batches(self):
        if self._first is not None:
            first, self._first = self._first, None
            if self.one_shot:
                yield first
                yield from self.source
                return
        yield from iter(self.source)

    def sample(self) -> tuple:
        it = iter(self.source)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError("data: the source yielded no batch.") from None
        batch = _checked_batch(first, 0, 0, 0)
        if self.one_shot:
            self._first = first
        self.shapes = [(a.shape[1:], np.dtype(a.dtype)) for a in batch]
        self.first_rows = batch[0].shape[0]
        return batch

    def total_weight(self) -> float:
        """The number of observations over one pass of the batches (each weighs 1)."""
        if self.one_shot:
            raise ValueError(
                "penalty: a penalised fit needs the number of observations before it "
                "starts, but a one-shot iterator can be read only once; pass a re-iterable "
                "(mlefit.batches of a list of batches, or mlefit.ArrayStream)."
            )
        return float(sum(np.shape(_checked_batch(b, i, 0, 0)[0])[0]
                         for i, b in enumerate(iter(self.source))))

    def chunks(self, rows: int, order: str = "none", key=None, epoch: int = 0):
        start = 0
        for i, b in enumerate(self._batches()):
            obs = tuple(np.asarray(a) for a in _checked_batch(b, i, epoch, start))
            got = [(a.shape[1:], a.dtype) for a in obs]
            if got != self.shapes:
                raise ValueError(
                    f"data: batch {i} of epoch {epoch} has (trailing shape, dtype) {got}, "
                    f"but the first batch had {self.shapes}; every batch needs the same."
                )
            m = obs[0].shape[0]
            if m > rows:
                raise ValueError(
                    f"data: batch {i} of epoch {epoch} has {m} observations, more than the "
                    f"first batch ({rows} rows with padding), which sets the compiled shape; "
                    "yield the largest batch first, or batches of one size."
                )
            start += m
            yield _pad_chunk(obs, np.ones((m,), np.dtype(jnp.result_type(float))), rows)
        self.rows_read = start  # observations in the pass just read


def _checked_batch(batch, i: int, epoch: int, start: int) -> tuple:
    """``check_data`` of batch ``i`` of a user's iterable, whose first row is row ``start``
    of the epoch: a NaN or inf is named by its row in the stream, column and batch."""
    arrays = check_data(batch, check_finite=False)
    names = ["data"] if len(arrays) == 1 else [f"data[{k}]" for k in range(len(arrays))]
    for name, a in zip(names, arrays, strict=True):
        _raise_non_finite(name, np.asarray(a), lambda r: start + r,
                          lambda row: f"batch {i} of epoch {epoch}, its row {row - start}")
    return arrays


def batches(iterable) -> _IterableSource:
    """Declares ``iterable`` a stream of batches for :func:`mlefit.fit`: returns the source.

    Each batch is an array or a tuple of arrays ``(X, y)``, observations on the leading
    axis, with the same trailing shapes and dtypes; one pass over ``iterable`` is one
    epoch. A re-iterable (a list of batches, an object with ``__iter__``) serves any
    number of passes; a one-shot iterator (a generator) serves one: minibatch SGD with
    ``epochs=1``. ``fit`` never guesses a stream from iterability: a list is one array,
    a tuple is conditional data, a generator is an error pointing here.

    Example:
        >>> import numpy as np, mlefit
        >>> X, y = np.ones((8, 2)), np.zeros(8)
        >>> src = mlefit.batches([(X[:4], y[:4]), (X[4:], y[4:])])
        >>> mlefit._sources.is_source(src), mlefit._sources.is_source([1.0, 2.0])
        (True, False)
    """
    if isinstance(iterable, (ArrayStream, _IterableSource)):
        return iterable
    if isinstance(iterable, (np.ndarray, jax.Array, str, bytes, dict)) or not isinstance(
        iterable, collections.abc.Iterable
    ):
        raise TypeError(
            f"batches: expected an iterable of batches (a list of (X, y) tuples, a "
            f"generator), got {type(iterable).__name__}; pass arrays to fit directly."
        )
    return _IterableSource(iterable)


def is_source(data) -> bool:
    """True for a stream of batches: an :class:`ArrayStream` or ``batches(iterable)``.

    Only these; an iterable is not guessed to be a stream (see :func:`batches`).
    """
    return isinstance(data, (ArrayStream, _IterableSource))


def _as_source(source):
    """The source of the ``stream_*`` sums: an ``ArrayStream``, ``batches(...)``, or a
    re-iterable of batches (there the argument is a stream by definition)."""
    return batches(source)


