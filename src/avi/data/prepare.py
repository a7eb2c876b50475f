"""From the user's model and arguments to the data a step reads.

The model is traced (:func:`avi.model.trace_model`), the per-datum data become the encoder's
standardized features, and the batch size is chosen. In-memory data are traced whole and live on
the device; memory-mapped data (:mod:`avi.data.stream`) are traced on a prefix and read per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from avi.data.rows import check_minibatchable, per_datum_features
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
    def from_features(cls, features: np.ndarray) -> FeatureScaling:
        """Per-feature mean and sd over the data; for a set encoder's (J, S, 1 + F) input
        over the real rows, the mask channel (channel 0) left as it is."""
        if features.ndim == 3:
            rows = features[features[..., 0] > 0][:, 1:]
            if rows.shape[0] == 0:
                rows = np.zeros((1, features.shape[-1] - 1), features.dtype)
            inner = cls.from_features(rows)
            return cls(np.r_[0.0, inner.mean], np.r_[1.0, inner.std])
        std = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(std > 0, std, 1.0))

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
        features: (N, F) standardized encoder inputs (of the prefix when streamed).
        scaling: the encoder inputs' standardization.
        batch_size: data per step (None: full batch).
        source: the minibatch reader of memory-mapped data, or None.
    """

    traced: TracedModel
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    features: np.ndarray
    scaling: FeatureScaling
    batch_size: int | None
    source: BatchSource | None


def _device_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]):
    as_device = lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a
    return tuple(as_device(a) for a in args), {k: as_device(a) for k, a in kwargs.items()}


def prepare_in_memory(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None,
    tables: bool,
    batch_size: int | None,
) -> Prepared:
    """Trace on all data; per-datum data and features live on the device."""
    traced = trace_model(model, args, kwargs, plate=plate)
    layout = traced.layout
    step_batch_size = resolve_batch_size(batch_size, layout.num_data, tables)
    if step_batch_size is not None:
        try:
            check_minibatchable(traced)
        except ModelError:
            if batch_size is not None:
                raise
            step_batch_size = None  # the automatic choice falls back to the full batch
    raw_features = per_datum_features(traced, args, kwargs)
    scaling = FeatureScaling.from_features(raw_features)
    device_args, device_kwargs = _device_arguments(args, kwargs)
    features = scaling.apply(raw_features)
    return Prepared(traced, device_args, device_kwargs, features, scaling, step_batch_size, None)


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
    device_args, device_kwargs = _device_arguments(args_prefix, kwargs_prefix)
    features = scaling.apply(prefix_features)
    return Prepared(traced, device_args, device_kwargs, features, scaling, step_batch_size, source)
