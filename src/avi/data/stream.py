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

import jax.numpy as jnp
import numpy as np

from avi.data.batch import StreamedRows
from avi.errors import ModelError
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
    """Draws minibatches of rows (uniformly, with replacement) from the streamed arguments."""

    def __init__(
        self,
        layout: ModelLayout,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        batch_size: int,
        chunk_size: int,
        seed: int,
    ) -> None:
        self.layout = layout
        self.args = args
        self.kwargs = kwargs
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.rng = np.random.default_rng(seed)
        sample = self.rng.integers(0, layout.num_data, min(layout.num_data, SCALING_ROWS))
        raw = self._raw_features(np.sort(sample))
        self.mean = raw.mean(axis=0)
        std = raw.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)

    def _rows(self, index: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
        order = np.argsort(index)  # sorted reads are sequential in the file
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)

        def read(value: np.ndarray) -> np.ndarray:
            return np.asarray(value[index[order]])[inverse]

        return (
            {i: read(self.args[i]) for i in self.layout.per_datum_args},
            {k: read(self.kwargs[k]) for k in self.layout.per_datum_kwargs},
        )

    def _raw_features(self, index: np.ndarray) -> np.ndarray:
        return _flatten(*self._rows(index), len(index))

    def rows(self, index: np.ndarray) -> StreamedRows:
        """The batch of the given row indices."""
        args, kwargs = self._rows(index)
        features = (_flatten(args, kwargs, len(index)) - self.mean) / self.std
        return StreamedRows(
            {i: jnp.asarray(a) for i, a in args.items()},
            {k: jnp.asarray(a) for k, a in kwargs.items()},
            jnp.asarray(features, dtype=jnp.float32),
        )

    def chunk(self) -> StreamedRows:
        """One chunk: ``chunk_size`` batches stacked along a leading axis."""
        index = self.rng.integers(0, self.layout.num_data, self.chunk_size * self.batch_size)
        flat = self.rows(index)
        shape = (self.chunk_size, self.batch_size)
        return StreamedRows(
            {i: a.reshape(shape + a.shape[1:]) for i, a in flat.args.items()},
            {k: a.reshape(shape + a.shape[1:]) for k, a in flat.kwargs.items()},
            flat.features.reshape(shape + flat.features.shape[1:]),
        )


def _flatten(args: dict[int, np.ndarray], kwargs: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Per-datum features in :func:`avi.data.rows.per_datum_features` order (args, then kwargs)."""
    columns = [a.reshape(rows, -1) for a in [*args.values(), *kwargs.values()]]
    return np.concatenate(columns, axis=1).astype(np.float32)
