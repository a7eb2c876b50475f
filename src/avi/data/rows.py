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
    traced: TracedModel,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    rows: slice = slice(None),
) -> np.ndarray:
    """The encoder's raw input: each datum's per-datum arguments and observed values, flattened.

    Observed values that are the same array as a per-datum argument are taken once (decided
    on all rows, so that every slice of rows has the same columns).

    For a grouped model (:mod:`avi.data.groups`) the input of a set encoder: (J, S, 1 + F),
    channel 0 the row mask (see :func:`avi.data.groups.group_features`).

    Args:
        rows: the data whose features are wanted (all by default); only those rows of the
            arguments are read and converted.

    Returns:
        (n, F) float array, n the number of ``rows`` of the data plate.
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
        return group_features(spec, args, kwargs, group_level, traced.observed_values)[rows]
    inputs = [args[i] for i in layout.per_datum_args]
    inputs += [kwargs[k] for k in layout.per_datum_kwargs]
    for value in traced.observed_values.values():
        if not any(_same_column(a, value, num_data) for a in inputs):
            inputs.append(value)
    count = len(range(num_data)[rows])
    columns = [np.asarray(a[rows], dtype=np.float32).reshape(count, -1) for a in inputs]
    if not columns:
        return np.zeros((count, 0), dtype=np.float32)
    return np.concatenate(columns, axis=1)


def _same_column(a: Any, b: Any, num_data: int, block: int = 65536) -> bool:
    """Whether two per-datum arrays give the same float32 feature columns (read in blocks
    of rows, so no whole copy is made)."""
    if np.size(a) != np.size(b):
        return False
    column = lambda v, s: np.asarray(v[s], dtype=np.float32).reshape(len(range(num_data)[s]), -1)
    return all(
        np.array_equal(column(a, s), column(b, s))
        for s in (slice(i, i + block) for i in range(0, num_data, block))
    )
