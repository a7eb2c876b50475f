"""From the user's model and arguments to the data a step reads.

The model is traced (:func:`avi.model.trace_model`), the per-datum data become the encoder's
standardized features, and the batch size is chosen. In-memory data are traced whole and live on
the device; memory-mapped data (:mod:`avi.data.stream`) are traced on a prefix and read per chunk.

With the data split over several processes' devices (``jax.distributed``), each process converts
only its own rows: its features are computed for those rows (their standardization from sums
added across processes), and the per-datum arguments stay on the host until
:func:`avi.data.shard.shard_rows` sends each device its rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from avi.data.groups import GroupedModel
from avi.data.rows import check_minibatchable, per_datum_features
from avi.data.shard import data_mesh, spans_processes, summed_over_processes
from avi.data.stream import (
    TRACE_ROWS,
    BatchSource,
    check_streamable,
    local_rows,
    prefix,
    streamed_length,
)
from avi.errors import ModelError
from avi.model import Model, TracedModel, trace_model, validate_arguments

AUTO_FULL_BATCH_LIMIT = 8192
"""Up to this many data, the default is full-batch optimisation."""

AUTO_BATCH_SIZE = 1024
"""Default batch of encoder-based families beyond AUTO_FULL_BATCH_LIMIT data."""


@dataclass(frozen=True)
class FeatureScaling:
    """Standardization of the encoder's input, fixed from the training data."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, mesh: Mesh | None = None) -> FeatureScaling:
        """Per-feature mean and sd over the data; for a set encoder's (J, S, 1 + F) input
        over the real rows, the mask channel (channel 0) left as it is. With ``mesh`` spanning
        several processes, ``features`` are this process's rows and the sums are added across
        processes (a collective)."""
        if features.ndim == 3:
            rows = features[features[..., 0] > 0][:, 1:]
            inner = cls.from_features(rows, mesh)
            return cls(np.r_[0.0, inner.mean], np.r_[1.0, inner.std])
        raw = np.asarray(features, np.float64)
        added = lambda sums: summed_over_processes(sums, spans_processes(mesh))
        count, first = added(np.stack([np.full(raw.shape[1], raw.shape[0], float), raw.sum(0)]))
        mean = first / np.maximum(count, 1.0)
        second = added(((raw - mean) ** 2).sum(axis=0))  # two passes: no cancellation
        std = np.sqrt(second / np.maximum(count, 1.0))
        return cls(mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32))

    def apply(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std).astype(np.float32)


def resolve_batch_size(batch_size: int | None, num_data: int, tables: bool) -> int | None:
    """The batch size a step uses; None means the full batch.

    ``batch_size=None`` chooses: the full batch for a family with per-datum ``tables`` (F-VI: each of its factors learns only from
    its own datum, so a minibatch of B updates a fraction B/N of them per step and needs N/B
    times more steps) and for N <= AUTO_FULL_BATCH_LIMIT; otherwise AUTO_BATCH_SIZE, with
    which A-VI's per-step cost no longer grows with N.
    """
    if batch_size is None:
        if tables or num_data <= AUTO_FULL_BATCH_LIMIT:
            return None
        return AUTO_BATCH_SIZE
    return None if batch_size == num_data else int(batch_size)


@dataclass(frozen=True)
class Prepared:
    """A traced model with its device data and, for streamed data, the batch source.

    Attributes:
        traced: the model traced on the data (on a prefix when streamed, with the full N).
        args, kwargs: the model's arguments on the device (a prefix when streamed).
        features: (N, F) standardized encoder inputs (of the prefix when streamed; of this
            process's ``rows`` when the data are split over several processes).
        scaling: the encoder inputs' standardization.
        batch_size: data per step (None: full batch).
        source: the minibatch reader of memory-mapped data, or None.
        mesh: the devices the data are split over (None: one device).
        rows: the rows ``features`` hold (all: ``slice(None)``).
    """

    traced: TracedModel
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    features: np.ndarray
    scaling: FeatureScaling
    batch_size: int | None
    source: BatchSource | None
    mesh: Mesh | None = None
    rows: slice = dataclasses.field(default_factory=lambda: slice(None))


def device_arguments(args: Sequence[Any], kwargs: Mapping[str, Any], host: Any = ()):
    """Arrays on the default device, except the positions and names in ``host``."""
    as_device = lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a
    return (
        tuple(a if i in host else as_device(a) for i, a in enumerate(args)),
        {k: a if k in host else as_device(a) for k, a in kwargs.items()},
    )


def prepare_in_memory(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None,
    tables: bool,
    batch_size: int | None,
    devices: Sequence[jax.Device] | None = None,
    rowwise: bool = True,
) -> Prepared:
    """Trace on all data; per-datum data and features live on the device, split over
    ``devices`` when several (:func:`avi.data.shard.data_mesh`).

    When they belong to several processes and the family reads each datum's features alone
    (``rowwise``; a Window reads its neighbours'), each process computes only its rows'
    features and keeps its per-datum arguments on the host for
    :func:`avi.data.shard.shard_rows`.
    """
    traced = trace_model(model, args, kwargs, plate=plate)
    layout = traced.layout
    mesh = data_mesh(devices, layout.num_data)
    step_batch_size = resolve_batch_size(batch_size, layout.num_data, tables)
    if step_batch_size is not None:
        try:
            check_minibatchable(traced)
        except ModelError:
            if batch_size is not None:
                raise
            step_batch_size = None  # the automatic choice falls back to the full batch
    rows, host = slice(None), ()
    if spans_processes(mesh) and rowwise and not isinstance(traced.model, GroupedModel):
        rows = local_rows(mesh, layout.num_data)
        host = (*layout.per_datum_args, *layout.per_datum_kwargs)
    raw_features = per_datum_features(traced, args, kwargs, rows)
    scaling = FeatureScaling.from_features(raw_features, mesh if host else None)
    device_args, device_kwargs = device_arguments(args, kwargs, host)
    features = scaling.apply(raw_features)
    return Prepared(
        traced, device_args, device_kwargs, features, scaling, step_batch_size, None, mesh, rows
    )


def prepare_streamed(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None,
    batch_size: int | None,
    chunk_size: int,
    seed: int,
    mesh: Mesh | None = None,
) -> Prepared:
    """Trace on a prefix of memory-mapped data; minibatches are read from the map per chunk,
    each process reading only its devices' rows when the data are split over ``mesh``."""
    num_data = streamed_length(args, kwargs)
    validate_arguments(args, kwargs, local_rows(mesh, num_data))
    args_prefix, kwargs_prefix = prefix(args, kwargs, num_data, TRACE_ROWS)
    on_prefix = trace_model(model, args_prefix, kwargs_prefix, plate=plate)
    check_streamable(on_prefix, args_prefix)
    check_minibatchable(on_prefix)
    prefix_features = per_datum_features(on_prefix, args_prefix, kwargs_prefix)
    layout = dataclasses.replace(on_prefix.layout, num_data=num_data)
    traced = dataclasses.replace(on_prefix, layout=layout)
    step_batch_size = resolve_batch_size(batch_size, num_data, False) or min(
        num_data, AUTO_BATCH_SIZE
    )
    source = BatchSource(layout, args, kwargs, step_batch_size, chunk_size, seed, mesh)
    scaling = FeatureScaling(source.mean, source.std)
    device_args, device_kwargs = device_arguments(args_prefix, kwargs_prefix)
    features = scaling.apply(prefix_features)
    return Prepared(
        traced, device_args, device_kwargs, features, scaling, step_batch_size, source, mesh
    )
