"""The input boundary: every array-like a user hands to avi becomes a numpy or JAX array, or a
clear :class:`avi.DataError` that names the argument and the fix.

Converted: pandas Series and DataFrames (``.to_numpy()``; nullable columns with missing values
become NaN, which the finiteness check then reports with how to mask them) and Python lists of
numbers. Tuples and other Python objects pass unchanged: they are the model's configuration
(shapes, names, callables), not data. Refused: complex, object, string, date and structured
arrays.

Precision: JAX computes in float32 unless ``jax_enable_x64`` is on, so a float64 argument is
refused when its float32 cast would lose the data's information: values beyond float32's range
(about 3.4e38), or a float32 rounding step that is not small against the spread of a column
(1e8 + noise of size 1 rounds to steps of 8). Integer arrays beyond int32's range are refused
for the same reason. The fix named in the message is to centre and scale the argument (or to
enable x64).

numpy arrays that need no conversion are returned as they are (no copy): memory-mapped arrays
stay memory-mapped (streaming detects them, :func:`avi.data.stream.is_streamed`), and their
values are not read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from avi.errors import DataError
from avi.model.arguments import describe_argument

__all__ = ["PRECISION_FRACTION", "convert_argument", "convert_arguments"]

PRECISION_FRACTION = 1e-3
"""A float64 column is refused when float32's rounding step at its largest magnitude exceeds
this fraction of its standard deviation across the data."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT32 = np.iinfo(np.int32)
_NUMERIC_KINDS = "biuf"


def _is_pandas(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("pandas") and hasattr(value, "to_numpy")


def _from_pandas(value: Any, where: str) -> np.ndarray:
    """A Series or DataFrame as a numeric numpy array (missing values as NaN)."""
    array = value.to_numpy()
    if array.dtype.kind in _NUMERIC_KINDS:
        return array
    try:  # nullable integer / boolean / float columns with pd.NA, or mixed numeric columns
        return value.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        dtypes = getattr(value, "dtypes", getattr(value, "dtype", None))
        raise DataError(
            f"{where} is a pandas {type(value).__name__} of non-numeric values ({dtypes}); "
            "avi needs numbers. Encode categories as integer codes (e.g. "
            "df['col'].astype('category').cat.codes) and pass numeric columns only."
        ) from error


def _kind_name(dtype: np.dtype) -> str:
    return {
        "c": "complex",
        "O": "Python objects",
        "U": "strings",
        "S": "bytes",
        "M": "dates",
        "m": "time deltas",
        "V": "structured records",
    }.get(dtype.kind, str(dtype))


def _check_dtype(array: Any, where: str) -> None:
    dtype = np.dtype(array.dtype)
    if dtype.kind in _NUMERIC_KINDS:
        return
    fix = (
        "pass the real and imaginary parts as two real arguments"
        if dtype.kind == "c"
        else "convert it to a float or integer array (e.g. np.asarray(x, dtype=float)); "
        "for missing values use NaN and a mask"
    )
    raise DataError(
        f"{where} holds {_kind_name(dtype)} (dtype {dtype}); avi needs real numbers: {fix}."
    )


def _check_precision(array: np.ndarray, where: str) -> None:
    """Refuse a float64/int64 array whose float32/int32 cast would lose its information."""
    if jax.config.jax_enable_x64 or isinstance(array, np.memmap) or array.size == 0:
        return
    if array.dtype.kind in "iu" and array.dtype.itemsize > 4:
        low, high = int(array.min()), int(array.max())
        if low < _INT32.min or high > _INT32.max:
            raise DataError(
                f"{where} holds integers up to {max(abs(low), abs(high))}, beyond int32's range "
                f"(JAX computes in 32 bits): they would wrap around. Subtract an offset or pass "
                "them as floats, or enable 64-bit JAX (jax.config.update('jax_enable_x64', True))."
            )
        return
    if array.dtype.kind != "f" or array.dtype.itemsize <= 4:
        return
    finite = np.isfinite(array)
    if not finite.all():
        return  # the finiteness check names the NaN/inf with the masking fix
    magnitude = float(np.max(np.abs(array)))
    if magnitude > _FLOAT32_MAX:
        raise DataError(
            f"{where} holds values up to {magnitude:.3g}, beyond float32's range (3.4e38): JAX "
            "computes in float32, where they overflow to inf. Rescale the argument (e.g. divide "
            "by its scale, or take logs), or enable 64-bit JAX."
        )
    if array.ndim == 0:
        return
    columns = array.reshape(array.shape[0], -1) if array.ndim > 1 else array[:, None]
    spread = columns.std(axis=0)
    step = np.spacing(np.abs(columns).max(axis=0).astype(np.float32)).astype(np.float64)
    lost = (spread > 0) & (step > PRECISION_FRACTION * spread)
    if lost.any():
        column = int(np.argmax(lost))
        mean = float(columns[:, column].mean())
        raise DataError(
            f"{where} is float64 with a spread (sd {spread[column]:.3g}) that is small against its "
            f"size (mean {mean:.6g}"
            + (f", column {column}" if array.ndim > 1 else "")
            + f"): float32, in which JAX computes, rounds it to steps of {step[column]:.3g}, "
            "losing the data's information. Centre and scale it first, e.g. "
            "(x - x.mean(0)) / x.std(0), or enable 64-bit JAX "
            "(jax.config.update('jax_enable_x64', True))."
        )


def _from_list(value: list, where: str) -> Any:
    """A list of numbers as an array; other lists (names, objects) are the model's own."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged: leave to the model
        return value
    if array.dtype.kind == "c":
        _check_dtype(array, where)
    return array if array.dtype.kind in _NUMERIC_KINDS and array.ndim >= 1 else value


def convert_argument(value: Any, where: str) -> Any:
    """One argument as the boundary converts it (see the module docstring).

    Args:
        value: the user's argument.
        where: how messages name it (e.g. "argument 0", "keyword argument 'x'").

    Raises:
        DataError: a non-numeric array, or one whose 32-bit cast would lose its information.
    """
    if _is_pandas(value):
        value = _from_pandas(value, where)
    elif isinstance(value, list):
        value = _from_list(value, where)
    if isinstance(value, np.generic) and not isinstance(value, (np.number, np.bool_)):
        _check_dtype(np.asarray(value), where)
    if isinstance(value, (np.ndarray, np.generic)):
        _check_dtype(value, where)
        _check_precision(value if isinstance(value, np.ndarray) else np.asarray(value), where)
    elif isinstance(value, jax.Array):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise DataError(f"{where} is a JAX random key; pass data (keys are avi's seed=...).")
        _check_dtype(value, where)
    return value


def convert_arguments(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Every model argument through :func:`convert_argument`; idempotent, no copy when none is
    needed.

    Raises:
        DataError: an argument that cannot be data (naming it and the fix).
    """
    converted = tuple(convert_argument(a, describe_argument(i)) for i, a in enumerate(args))
    return converted, {k: convert_argument(v, describe_argument(k)) for k, v in kwargs.items()}
