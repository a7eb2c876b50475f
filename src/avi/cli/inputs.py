"""What the commands read: a model function from a Python file, the model's arguments from a
data file, and the families named on the command line.

Data files (``--data``):

* ``.npz`` (``numpy.savez``): positional arguments under ``arg0``, ``arg1``, ...; keyword
  arguments under their names; 0-d arrays are passed as Python scalars.
* ``.npy`` (``numpy.save``): one array, the model's only (first) argument.
* ``.csv`` with a header row: a column named after an argument of the model is that argument
  (one value per datum); columns ``NAME[0]``, ``NAME[1]``, ... are stacked into one argument of
  shape (N, k); ``arg0``, ``arg1``, ... are positional, as in ``.npz``.

The arguments are checked against the model's signature before anything runs, so a misnamed
column is named in the error.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avi.errors import AviError
from avi.families import Amortized, Constant, Factorized, Family, Window
from avi.families.encoders import MLP, Polynomial

Arguments = tuple[tuple[Any, ...], dict[str, Any]]

_POSITIONAL = re.compile(r"arg(\d+)")
_COLUMN = re.compile(r"(?P<name>[^\[\]]+)\[(?P<index>\d+)\]")


def load_function(spec: str, option: str = "model") -> Callable[..., Any]:
    """The function NAME of the Python file FILE for ``spec = "FILE.py:NAME"``.

    Raises:
        AviError: no ':' in ``spec``, a missing file, a file that fails to import, or no
            callable NAME in it.
    """
    path_text, separator, name = spec.rpartition(":")
    if not separator or not path_text or not name:
        raise AviError(f"{option} {spec!r}: write FILE.py:NAME, e.g. my_model.py:model.")
    path = Path(path_text)
    if not path.is_file():
        raise AviError(f"{option} {spec!r}: no file {path}.")
    module_spec = importlib.util.spec_from_file_location(f"avi_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise AviError(f"{option} {spec!r}: {path} is not a Python file.")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's file can raise anything; we add context
        raise AviError(
            f"{option} {spec!r}: importing {path} failed: {type(error).__name__}: {error}"
        ) from error
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise AviError(
            f"{option} {spec!r}: {path} has no function {name!r} (its functions: "
            f"{', '.join(found) or 'none'})."
        )
    return function


def load_model(spec: str) -> Callable[..., Any]:
    """The model function of ``FILE.py:NAME`` (see :func:`load_function`)."""
    return load_function(spec, "model")


def load_data(path: str, option: str = "--data") -> Arguments:
    """The model's (positional, keyword) arguments stored in an .npz, .npy or .csv file.

    Raises:
        AviError: a missing or unreadable file, positional arguments with a hole (``arg0`` and
            ``arg2`` without ``arg1``), or CSV columns that are not numbers.
    """
    if not Path(path).is_file():
        raise AviError(
            f"{option} {path}: cannot read it as an .npz, .npy or .csv file: no such file."
        )
    if Path(path).suffix.lower() == ".csv":
        values = _read_csv(path, option)
    else:
        values = _read_numpy(path, option)
        if isinstance(values, np.ndarray):
            return (values,), {}
    positions = {int(m.group(1)): k for k in values if (m := _POSITIONAL.fullmatch(k))}
    if sorted(positions) != list(range(len(positions))):
        raise AviError(
            f"{option} {path}: positional arguments must be arg0, arg1, ... without gaps; "
            f"found {', '.join(positions[i] for i in sorted(positions))}."
        )
    args = tuple(values[positions[i]] for i in range(len(positions)))
    kwargs = {k: v for k, v in values.items() if k not in positions.values()}
    return args, kwargs


def _read_numpy(path: str, option: str) -> dict[str, Any] | np.ndarray:
    try:
        with open(path, "rb") as handle:  # numpy leaves its own handle open on a bad zip
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):  # a .npy file: the model's only argument
                return loaded
            with loaded as stored:
                arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        if "pickled" in str(error):
            error = ValueError("it is not a numpy file (a text file or a pickle?)")
        raise AviError(
            f"{option} {path}: cannot read it as an .npz (or .npy) file ({type(error).__name__}: "
            f"{error}). Write the model's arguments with numpy.savez(path, arg0=x, y=y), one "
            "array with numpy.save, or a .csv with a header row; pickles are not read."
        ) from error
    return {k: v.item() if v.ndim == 0 else v for k, v in arrays.items()}


def _read_csv(path: str, option: str) -> dict[str, np.ndarray]:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise AviError(f"{option} {path}: cannot read it as a .csv file ({error}).") from error
    if table.empty:
        raise AviError(
            f"{option} {path}: the .csv has no rows; write a header row, then one row per datum."
        )
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        raise AviError(
            f"{option} {path}: column(s) {', '.join(map(repr, text))} are not numbers; every "
            "column is an argument of the model (encode categories as integers)."
        )
    groups: dict[str, dict[int, np.ndarray]] = {}
    values: dict[str, np.ndarray] = {}
    for column in table.columns:
        match = _COLUMN.fullmatch(str(column))
        if match:
            groups.setdefault(match["name"], {})[int(match["index"])] = table[column].to_numpy()
        else:
            values[str(column)] = table[column].to_numpy()
    for name, parts in groups.items():
        if name in values or sorted(parts) != list(range(len(parts))):
            raise AviError(
                f"{option} {path}: columns {name}[0], {name}[1], ... must run without gaps and "
                f"without a column {name!r} beside them."
            )
        values[name] = np.stack([parts[i] for i in range(len(parts))], axis=1)
    return values


def check_signature(model: Callable[..., Any], arguments: Arguments, source: str) -> None:
    """The model can be called with these arguments (names and count), before it runs.

    Raises:
        AviError: it cannot; the message shows the model's signature.
    """
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):  # builtins and some wrappers have none: let the model say
        return
    args, kwargs = arguments
    parameters = signature.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:
            raise AviError(
                f"{source}: {', '.join(map(repr, unknown))} is not an argument of the model "
                f"{getattr(model, '__name__', 'model')}{signature}; name the columns (or .npz "
                "entries) after its arguments (arg0, arg1, ... are positional)."
            )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        given = [f"arg{i}" for i in range(len(args))] + list(kwargs)
        raise AviError(
            f"{source} holds {', '.join(given) or 'nothing'}, but the model is "
            f"{getattr(model, '__name__', 'model')}{signature}: {error}. Name the columns (or "
            ".npz entries) after the model's arguments; arg0, arg1, ... are positional."
        ) from None


def parse_window(text: str | None) -> Window | None:
    """``"-1,0"`` -> ``Window(offsets=(-1, 0))``; None -> None.

    Raises:
        AviError: not a comma-separated list of integers.
    """
    if text is None:
        return None
    try:
        return Window(offsets=tuple(int(part) for part in text.split(",")))
    except ValueError as error:
        raise AviError(
            f"--window {text!r}: give comma-separated integer offsets, e.g. -1,0."
        ) from error


FAMILY_TOKENS = "factorized, constant, amortized, mlp:WIDTH, poly:DEGREE"


def parse_family(token: str, window: Window | None, option: str = "--families") -> Family:
    """One family token: factorized, constant, amortized, mlp:WIDTH, poly:DEGREE.

    Raises:
        AviError: an unknown token or a bad number.
    """
    kind, _, number = token.strip().lower().partition(":")
    try:
        if kind == "factorized" and not number:
            return Factorized()
        if kind == "constant" and not number:
            return Constant()
        if kind == "amortized" and not number:
            return Amortized(inputs=window)
        if kind == "mlp" and number:
            return Amortized(MLP(width=int(number)), window)
        if kind in ("poly", "polynomial") and number:
            return Amortized(Polynomial(degree=int(number)), window)
    except ValueError as error:
        raise AviError(f"{option}: {token!r} needs an integer after ':'.") from error
    raise AviError(f"{option}: unknown family {token!r}; use {FAMILY_TOKENS}.")


def parse_families(text: str, window: Window | None) -> dict[str, Family]:
    """``--families`` as name -> family (the tokens are the names)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise AviError(f"--families {text!r}: name at least one family.")
    return {token: parse_family(token, window) for token in tokens}
