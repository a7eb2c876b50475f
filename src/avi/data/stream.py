"""Streamed minibatches from memory-mapped data (``np.load(path, mmap_mode="r")``).

When a per-datum argument is a ``numpy.memmap``, the data may be larger than memory: the model
is traced on a prefix of the rows, and every chunk of steps receives minibatches gathered on
the host from the memory map (only the batch's rows are read) while the device works on the
previous chunk. Only encoder-based families can stream: F-VI keeps 2 N D_l parameters in
memory, and a Window needs neighbouring rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avi.data.batch import StreamedRows
from avi.data.shard import DATA_AXIS, spans_processes, summed_over_processes
from avi.errors import DataError, ModelError
from avi.model import ModelLayout, TracedModel

TRACE_ROWS = 1024
"""Rows of the memory-mapped data on which the model is traced."""

SCALING_ROWS = 100_000
"""Rows sampled to standardize the encoder's inputs."""


def is_streamed(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether any argument is a memory-mapped array."""
    return any(isinstance(a, np.memmap) for a in [*args, *kwargs.values()])


def streamed_length(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """N: the leading length of the memory-mapped arguments (they must agree)."""
    lengths = {len(a) for a in [*args, *kwargs.values()] if isinstance(a, np.memmap)}
    if len(lengths) != 1:
        raise ModelError(f"Memory-mapped arguments have different lengths {sorted(lengths)}.")
    return lengths.pop()


def prefix(
    args: Sequence[Any], kwargs: Mapping[str, Any], num_data: int, rows: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The first ``rows`` rows of every array argument with N rows, read into memory."""

    def cut(value: Any) -> Any:
        if isinstance(value, np.ndarray) and np.ndim(value) >= 1 and len(value) == num_data:
            return np.array(value[:rows])
        return value

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def check_streamable(traced: TracedModel, args_prefix: Sequence[Any]) -> None:
    """Streaming reads every per-datum value from the arguments, observations included.

    Raises:
        ModelError: an observed site whose values are not among the per-datum arguments.
    """
    layout = traced.layout
    columns = [
        np.asarray(args_prefix[i]).reshape(layout.num_data, -1) for i in layout.per_datum_args
    ]
    for name, value in traced.observed_values.items():
        column = np.asarray(value).reshape(layout.num_data, -1)
        if not any(c.shape == column.shape and np.allclose(c, column) for c in columns):
            raise ModelError(
                f"Observed site '{name}' does not take its values from a per-datum argument; "
                "to stream, pass the observations as a (memory-mapped) argument of the model."
            )


class BatchSource:
    """Draws minibatches of rows (uniformly, with replacement) from the streamed arguments.

    With a mesh of S devices (:mod:`avi.data.shard`; with ``jax.distributed``, the devices of
    every process) each draw is stratified like in-memory minibatches
    (:func:`avi.data.batch.draw_batch`): B / S rows from each of the S equal blocks of the file.
    Every process draws the same indices (the same seed) but reads, converts and sends to its
    devices only the rows of its own blocks; the batch is one global array split along its rows
    (``jax.make_array_from_process_local_data``). The encoder's input scaling is computed the
    same way: each process sums its blocks' share of the sample, and the sums are added across
    processes.
    """

    def __init__(
        self,
        layout: ModelLayout,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        batch_size: int,
        chunk_size: int,
        seed: int,
        mesh: Mesh | None = None,
    ) -> None:
        self.layout = layout
        self.args = args
        self.kwargs = kwargs
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.mesh = mesh
        self.strata = 1 if mesh is None else mesh.devices.size
        self.local = local_strata(mesh)
        self.rng = np.random.default_rng(seed)
        self.mean, self.std = self._scaling(min(layout.num_data, SCALING_ROWS))

    def _draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Row indices of shape (*shape, S, b): row block s drawn from the s-th of S blocks."""
        block = self.layout.num_data // self.strata
        *lead, count = shape
        per_stratum = -(-count // self.strata)
        local = rng.integers(0, block, (*lead, self.strata, per_stratum))
        return local + block * np.arange(self.strata)[:, None]

    def _rows(self, index: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
        """This process's rows of a drawn index (*lead, S, b), as (*lead, S_local * b, ...)."""
        mine = index[..., self.local, :]
        flat = mine.reshape(-1)
        order = np.argsort(flat)  # sorted reads are sequential in the file
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        shape = (*mine.shape[:-2], mine.shape[-2] * mine.shape[-1])

        def read(value: np.ndarray) -> np.ndarray:
            rows = np.asarray(value[flat[order]])[inverse]
            return rows.reshape(shape + rows.shape[1:])

        return (
            {i: read(self.args[i]) for i in self.layout.per_datum_args},
            {k: read(self.kwargs[k]) for k in self.layout.per_datum_kwargs},
        )

    def _scaling(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the raw features over ``count`` sampled rows."""
        args, kwargs = self._rows(self._draw(self.rng, (count,)))
        rows = next(iter([*args.values(), *kwargs.values()])).shape[0]
        raw = _flatten(args, kwargs, rows).astype(np.float64)
        sums = np.stack([np.full(raw.shape[1], rows, np.float64), raw.sum(0), (raw**2).sum(0)])
        sums = summed_over_processes(sums, spans_processes(self.mesh))
        total, first, second = sums
        mean = first / total
        std = np.sqrt(np.maximum(second / total - mean**2, 0.0))
        return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)

    def _global(self, value: np.ndarray, axis: int) -> jax.Array:
        """A process's rows as its part of the global array split along ``axis``."""
        if self.mesh is None:
            return jnp.asarray(value)
        value = np.asarray(value, dtype=jax.dtypes.canonicalize_dtype(value.dtype))
        spec = PartitionSpec(*([None] * axis), DATA_AXIS)
        shape = list(value.shape)
        shape[axis] = shape[axis] * self.strata // len(self.local)
        return jax.make_array_from_process_local_data(
            NamedSharding(self.mesh, spec), value, tuple(shape)
        )

    def _batch(self, index: np.ndarray) -> StreamedRows:
        args, kwargs = self._rows(index)
        axis = index.ndim - 2
        rows = next(iter([*args.values(), *kwargs.values()])).shape[axis]
        lead = index.shape[:-2]
        flat_args = {i: a.reshape(-1, *a.shape[axis + 1 :]) for i, a in args.items()}
        flat_kwargs = {k: a.reshape(-1, *a.shape[axis + 1 :]) for k, a in kwargs.items()}
        raw = _flatten(flat_args, flat_kwargs, int(np.prod(lead, dtype=int)) * rows)
        features = ((raw - self.mean) / self.std).astype(np.float32)
        features = features.reshape(*lead, rows, features.shape[-1])
        return StreamedRows(
            {i: self._global(a, axis) for i, a in args.items()},
            {k: self._global(a, axis) for k, a in kwargs.items()},
            self._global(features, axis),
        )

    def sample(self, rng: np.random.Generator, count: int) -> StreamedRows:
        """About ``count`` rows (rounded up to a multiple of the devices), drawn with ``rng``
        and stratified like the minibatches (evaluation and certificate subsets)."""
        return self._batch(self._draw(rng, (count,)))

    def chunk(self) -> StreamedRows:
        """One chunk: ``chunk_size`` batches stacked along a leading axis."""
        return self._batch(self._draw(self.rng, (self.chunk_size, self.batch_size)))


def local_rows(mesh: Mesh | None, num_data: int) -> slice:
    """The rows of the file this process's devices hold (all rows for one process)."""
    mine = local_strata(mesh)
    block = num_data // (1 if mesh is None else mesh.devices.size)
    return slice(int(mine[0]) * block, (int(mine[-1]) + 1) * block)


def local_strata(mesh: Mesh | None) -> np.ndarray:
    """The positions along the data axis of this process's devices (all of them for one
    process).

    Raises:
        DataError: a mesh on which this process's devices are not contiguous.
    """
    if mesh is None:
        return np.zeros(1, dtype=int)
    mine = np.flatnonzero([d.process_index == jax.process_index() for d in mesh.devices.flat])
    if mine.size == 0 or np.any(np.diff(mine) != 1):
        raise DataError(
            "devices: each process's devices must be one contiguous run of the device list "
            "(the order of jax.devices()); pass devices=jax.devices() or leave it out."
        )
    return mine


def _flatten(args: dict[int, np.ndarray], kwargs: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Per-datum features in :func:`avi.data.rows.per_datum_features` order (args, then kwargs)."""
    columns = [a.reshape(rows, -1) for a in [*args.values(), *kwargs.values()]]
    return np.concatenate(columns, axis=1).astype(np.float32)
