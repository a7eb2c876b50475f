"""The model's arguments: which are arrays, which are per-datum, and that they are finite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avi.errors import DataError


def describe_argument(position: int | str) -> str:
    return f"argument {position}" if isinstance(position, int) else f"keyword argument '{position}'"


def _iterate_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]):
    yield from enumerate(args)
    yield from kwargs.items()


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) >= 0


VALIDATION_BLOCK = 1 << 20
"""Rows checked at a time, so that a memory-mapped argument is never read whole."""


def validate_arguments(
    args: Sequence[Any], kwargs: Mapping[str, Any], rows: slice | None = None
) -> None:
    """Reject arrays holding NaN or inf, naming the argument.

    Args:
        args, kwargs: the model's arguments.
        rows: for memory-mapped arguments, the rows to read and check (a process of several
            checks only its own share); None: all.

    Raises:
        DataError: an argument holds a non-finite value.
    """
    for position, value in _iterate_arguments(args, kwargs):
        if not _is_array(value) or not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
            continue
        low, high = 0, len(value) if np.ndim(value) else 0
        if rows is not None and isinstance(value, np.memmap):
            low, high, _ = rows.indices(high)
        blocks = range(low, high, VALIDATION_BLOCK) if np.ndim(value) else [None]
        for start in blocks:
            stop = None if start is None else min(start + VALIDATION_BLOCK, high)
            block = np.asarray(value if start is None else value[start:stop])
            finite = np.isfinite(block)
            if finite.all():
                continue
            bad = np.argwhere(~finite)[0] + np.eye(1, finite.ndim, 0, dtype=int)[0] * (start or 0)
            raise DataError(
                f"{describe_argument(position)} holds non-finite value(s) (NaN or inf), first "
                f"at index {tuple(int(i) for i in bad)}. "
                "Remove or impute them; for missing observations, pass a boolean mask to the "
                "model and use `numpyro.handlers.mask` or `dist.mask(...)` on the likelihood."
            )


def leading_lengths(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    parts = [
        f"{describe_argument(position)}: {np.shape(value)[0]}"
        for position, value in _iterate_arguments(args, kwargs)
        if _is_array(value) and np.ndim(value) >= 1
    ]
    return ", ".join(parts)


def is_per_datum(value: Any, num_data: int) -> bool:
    return _is_array(value) and np.ndim(value) >= 1 and np.shape(value)[0] == num_data
