"""Families, factors, encoder specs and input windows as JSON data, and back.

Every one of them is a frozen dataclass of plain fields, so one generic rule serves them all,
and a new factor or encoder spec needs nothing here: an object is written as its class
(``"avi.families.amortized:Amortized"``) and its fields, recursively; tuples are marked as
such. Only classes of avi itself are rebuilt on loading (a saved file never makes Python
import other code). An encoder that is a user's own equinox Module is written as its class
name only: its code is not data, so loading asks for a module of the same structure
(:func:`restore_object`'s ``encoder``) and fills it with the saved weights.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import equinox as eqx

from avi.errors import AviError, FamilyError

__all__ = ["class_path", "describe_object", "has_user_encoder", "restore_object"]

CUSTOM_ENCODER = "custom_encoder"
"""Key of a user's encoder Module in a description: its class path, nothing else."""


def class_path(obj: Any) -> str:
    """``module:qualified name`` of an object's class."""
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def describe_object(obj: Any) -> Any:
    """A family (or any of its parts) as JSON data.

    Raises:
        AviError: a part that is neither a plain value nor a dataclass (nor an encoder Module).
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (tuple, list)):
        return {"tuple": [describe_object(v) for v in obj]}
    if isinstance(obj, eqx.Module):
        return {CUSTOM_ENCODER: class_path(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: describe_object(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
        return {"class": class_path(obj), "fields": fields}
    raise AviError(
        f"{obj!r} ({type(obj).__name__}) cannot be saved: a family's parts must be frozen "
        "dataclasses of numbers, strings, tuples and other such dataclasses."
    )


def restore_object(description: Any, encoder: eqx.Module | None = None) -> Any:
    """The object :func:`describe_object` described.

    Args:
        description: JSON data from :func:`describe_object`.
        encoder: the skeleton of a user's encoder Module (its weights are replaced later).

    Raises:
        FamilyError: a user's encoder without ``encoder``, or of another class.
        AviError: a class outside avi, or one this avi version cannot build from the fields.
    """
    if description is None or isinstance(description, (bool, int, float, str)):
        return description
    if "tuple" in description:
        return tuple(restore_object(v, encoder) for v in description["tuple"])
    if CUSTOM_ENCODER in description:
        return _user_encoder(description[CUSTOM_ENCODER], encoder)
    cls = _avi_class(description["class"])
    fields = {k: restore_object(v, encoder) for k, v in description["fields"].items()}
    try:
        return cls(**fields)
    except (TypeError, AviError) as error:
        raise AviError(
            f"This avi cannot rebuild the saved {description['class']} from its fields "
            f"{sorted(fields)}: {error}. Load the fit with the avi version that saved it."
        ) from error


def _avi_class(path: str) -> type:
    module_name, _, name = path.partition(":")
    if module_name != "avi" and not module_name.startswith("avi."):
        raise AviError(
            f"The saved fit names the class {path}, which is not avi's; loading builds only "
            "avi's own classes (a saved file never makes Python import other code)."
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as error:
        raise AviError(
            f"This avi has no class {path} (the fit was saved by another version): {error}."
        ) from error
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise AviError(f"{path} is not a dataclass this avi can rebuild.")
    return obj


def _user_encoder(path: str, encoder: eqx.Module | None) -> eqx.Module:
    name = path.partition(":")[2]
    if encoder is None:
        raise FamilyError(
            f"The fit's encoder is your own equinox Module {name} ({path}); its code is not "
            f"saved, only its weights. Pass a module of the same structure, e.g. "
            f"avi.load(path, model, encoder={name}(..., key=jax.random.PRNGKey(0))): its "
            "weights are replaced by the saved ones."
        )
    if not isinstance(encoder, eqx.Module) or type(encoder).__qualname__ != name:
        raise FamilyError(
            f"encoder={type(encoder).__qualname__}: the fit's encoder is a {name} ({path}); "
            "pass a module of that class, built with the same sizes."
        )
    return encoder


def has_user_encoder(description: Any) -> bool:
    """Whether a described family holds a user's encoder Module."""
    if isinstance(description, dict):
        return CUSTOM_ENCODER in description or any(
            has_user_encoder(v) for v in description.values()
        )
    if isinstance(description, list):
        return any(has_user_encoder(v) for v in description)
    return False
