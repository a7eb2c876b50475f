"""Which rows belong to datum n: slicing per-datum arguments and the encoder's raw features.

A per-datum argument is an array whose leading axis has the data plate's size
(:func:`avi.model.arguments.is_per_datum`); datum n's rows are ``a[n]`` of each such argument
and of each observed site of the data plate, with the plate's axis moved first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avi.data.batch import take_rows
from avi.data.groups import ROW_MASK, GroupedModel, group_features
from avi.errors import ModelError
from avi.model import ModelLayout, TracedModel, plate_axis


def check_minibatchable(traced: TracedModel) -> None:
    """Minibatches slice per-datum arguments along axis 0; the observations must follow them.

    Raises:
        ModelError: an observed site of the data plate is not laid out data-axis first, or
            no argument carries the per-datum data.
    """
    layout = traced.layout
    if not (layout.per_datum_args or layout.per_datum_kwargs):
        raise ModelError(
            f"batch_size needs per-datum arguments (arrays with {layout.num_data} rows, the "
            f"size of plate '{layout.plate}'), but none has the data along its first axis. "
            "Pass the data as model arguments with the data axis first, or fit full-batch."
        )
    for name in layout.observed:
        site = traced.trace[name]
        if plate_axis(site, layout.plate) != 0:
            raise ModelError(
                f"batch_size: observed site '{name}' has the data plate '{layout.plate}' on axis "
                f"{plate_axis(site, layout.plate)} of its value; minibatches slice axis 0. Put "
                "the data axis first (e.g. numpyro.plate(..., dim=-2) for the inner plate)."
            )


def map_per_datum(
    layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any], fn: Callable[[Any], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with ``fn`` applied to every per-datum array (positional ones first)."""
    mapped_args = tuple(fn(a) if i in layout.per_datum_args else a for i, a in enumerate(args))
    mapped_kwargs = {k: fn(a) if k in layout.per_datum_kwargs else a for k, a in kwargs.items()}
    return mapped_args, mapped_kwargs


def slice_arguments(
    layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any], index: jax.Array
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Take the rows ``index`` of every per-datum argument; others pass whole."""
    return map_per_datum(layout, args, kwargs, lambda a: take_rows(a, index))


def per_datum_features(
    traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> np.ndarray:
    """The encoder's raw input: each datum's per-datum arguments and observed values, flattened.

    Observed values that are the same array as a per-datum argument are taken once.

    For a grouped model (:mod:`avi.data.groups`) the input of a set encoder: (J, S, 1 + F),
    channel 0 the row mask (see :func:`avi.data.groups.group_features`).

    Returns:
        (N, F) float array, N the data plate's size for these arguments.
    """
    layout = traced.layout
    num_data = layout.num_data
    if isinstance(traced.model, GroupedModel):
        spec = traced.model.spec
        group_level = [args[i] for i in layout.per_datum_args if i not in spec.row_args]
        group_level += [
            kwargs[k]
            for k in layout.per_datum_kwargs
            if k not in spec.row_kwargs and k != ROW_MASK
        ]
        return group_features(spec, args, kwargs, group_level, traced.observed_values)
    columns: list[np.ndarray] = [
        np.asarray(args[i], dtype=np.float32).reshape(num_data, -1) for i in layout.per_datum_args
    ]
    columns += [
        np.asarray(kwargs[k], dtype=np.float32).reshape(num_data, -1)
        for k in layout.per_datum_kwargs
    ]
    for value in traced.observed_values.values():
        column = np.asarray(value, dtype=np.float32).reshape(num_data, -1)
        if not any(c.shape == column.shape and np.array_equal(c, column) for c in columns):
            columns.append(column)
    if not columns:
        return np.zeros((num_data, 0), dtype=np.float32)
    return np.concatenate(columns, axis=1)
