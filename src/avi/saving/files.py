"""The on-disk format of a saved fit: a folder with a JSON description and the arrays.

    DIR/fit.json      format, versions, and whatever the writer describes (model sites, family,
                      training record), plus the table of the arrays' leaves
    DIR/arrays.eqx    the arrays, written with ``equinox.tree_serialise_leaves`` (no pickle)

Reading the arrays needs a skeleton pytree of the same structure (equinox's rule); the table
of leaves (key path, shape, dtype) lets :func:`read_arrays` name the first leaf where a skeleton
and the file disagree instead of failing inside equinox. Checkpoints reuse this format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from avi.errors import AviError

__all__ = [
    "ARRAYS",
    "DESCRIPTION",
    "FORMAT",
    "FORMAT_VERSION",
    "leaf_table",
    "read_arrays",
    "read_description",
    "versions",
    "write",
]

FORMAT = "avi-fit"
FORMAT_VERSION = 1
"""Raised whenever a saved file changes meaning; a reader refuses newer versions."""

DESCRIPTION = "fit.json"
ARRAYS = "arrays.eqx"

_LIBRARIES = ("avi", "jax", "jaxlib", "numpyro", "equinox", "optax", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of avi and the libraries a saved fit depends on."""
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _serialised(leaf: Any) -> bool:
    return eqx.is_array_like(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)


def leaf_table(tree: Any) -> list[dict[str, Any]]:
    """Key path, shape and dtype of every leaf equinox serialises, in its order."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [
        {
            "path": jax.tree_util.keystr(path),
            "shape": list(getattr(leaf, "shape", ())),
            "dtype": str(getattr(leaf, "dtype", type(leaf).__name__)),
        }
        for path, leaf in leaves
        if _serialised(leaf)
    ]


def write(
    directory: str | Path, description: Mapping[str, Any], tree: Any, overwrite: bool
) -> Path:
    """Write ``description`` (JSON data) and ``tree``'s arrays into ``directory``.

    Files are written under temporary names and renamed, so an interrupted save leaves any
    earlier fit in the folder whole.

    Raises:
        AviError: ``directory`` is a file, or already holds a saved fit and not ``overwrite``.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AviError(f"path {str(directory)!r} is a file; give a folder for the saved fit.")
    if not overwrite and any((directory / name).exists() for name in (DESCRIPTION, ARRAYS)):
        raise AviError(
            f"{directory} already holds a saved fit; pass overwrite=True to replace it, or "
            "give another folder."
        )
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        **description,
        "arrays": {"file": ARRAYS, "leaves": leaf_table(tree)},
    }
    arrays_tmp, description_tmp = directory / f".{ARRAYS}.tmp", directory / f".{DESCRIPTION}.tmp"
    eqx.tree_serialise_leaves(arrays_tmp, tree)
    description_tmp.write_text(json.dumps(document, indent=1, allow_nan=True) + "\n")
    os.replace(arrays_tmp, directory / ARRAYS)
    os.replace(description_tmp, directory / DESCRIPTION)
    return directory


def read_description(directory: str | Path) -> dict[str, Any]:
    """The JSON description of a saved fit, its format and version checked.

    Raises:
        AviError: no such folder or file, unreadable JSON, another format, or a format
            version newer than this avi reads.
    """
    path = Path(directory) / DESCRIPTION
    if not path.is_file():
        what = "no such folder" if not Path(directory).exists() else f"it has no {DESCRIPTION}"
        raise AviError(
            f"{directory} is not a saved avi fit ({what}); give the folder fit.save wrote."
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AviError(f"{path} cannot be read as JSON ({error}).") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise AviError(f'{path} is not an avi fit description (no "format": "{FORMAT}").')
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        saved_by = document.get("versions", {}).get("avi", "an unknown version")
        raise AviError(
            f"{path} has format version {version!r}, written by avi {saved_by}; this avi reads "
            f"versions up to {FORMAT_VERSION}: upgrade avi to load it."
        )
    return document


def read_arrays(directory: str | Path, like: Any, table: list[Mapping[str, Any]]) -> Any:
    """The saved arrays, read into the structure of the skeleton ``like``.

    Raises:
        AviError: the skeleton's leaves differ from the saved table (the first difference is
            named), or the arrays file is missing or damaged.
    """
    expected = [(t["path"], list(t["shape"])) for t in table]
    given = [(t["path"], t["shape"]) for t in leaf_table(like)]
    if given != expected:
        difference = next(
            (
                f"{g[0]} {tuple(g[1])} where the file has {e[0]} {tuple(e[1])}"
                for g, e in zip(given, expected, strict=False)
                if g != e
            ),
            f"{len(given)} arrays where the file has {len(expected)}",
        )
        raise AviError(f"The saved arrays do not fit the rebuilt parameters: {difference}.")
    path = Path(directory) / ARRAYS
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except (OSError, ValueError, EOFError) as error:
        raise AviError(f"{path} cannot be read ({type(error).__name__}: {error}).") from error
