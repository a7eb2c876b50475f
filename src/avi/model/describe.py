"""A traced model's sites as plain JSON data, and what differs between two models' sites.

A saved fit (:mod:`avi.saving`) carries this description instead of the model's code: every
latent site with its role (global or local), shapes, event and plate axes and support, the data
plate, the observed sites, which arguments are per-datum, and the learned parameter sites
(constraint, and each leaf's key path and shape). Loading rebuilds the layout and the
supports from it (:func:`restore_traced`), and new data are refused when the model traced on them
has other sites (:func:`site_differences`), with the site and the difference named.

Supports are NumPyro constraints: a module-level instance (``constraints.real``,
``constraints.positive``) is kept by name, so that identity checks still hold after loading;
any other (``interval(0, 1)``, ``independent(real, 1)``) by its class in
``numpyro.distributions.constraints`` and its attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from numpyro.distributions import constraints

from avi.errors import AviError
from avi.model.layout import Model, ModelLayout, SiteLayout, TracedModel
from avi.model.params import ParamLayout

__all__ = [
    "describe_layout",
    "describe_support",
    "restore_support",
    "restore_traced",
    "site_differences",
]

_NAMED = {
    id(value): name
    for name, value in vars(constraints).items()
    if isinstance(value, constraints.Constraint)
}


def describe_support(support: constraints.Constraint) -> dict[str, Any]:
    """A NumPyro constraint as JSON data: ``{"name": "positive"}`` for a module-level
    instance, else ``{"class": "_Interval", "fields": {...}}``.

    Raises:
        AviError: a constraint class that is not NumPyro's (a user's own support).
    """
    name = _NAMED.get(id(support))
    if name is not None:
        return {"name": name}
    cls = type(support)
    if getattr(constraints, cls.__name__, None) is not cls:
        raise AviError(
            f"The support {support!r} ({cls.__module__}.{cls.__qualname__}) is not one of "
            "numpyro.distributions.constraints, so a saved fit could not rebuild it: give the "
            "site a distribution with a NumPyro support."
        )
    return {"class": cls.__name__, "fields": {k: _value(v) for k, v in vars(support).items()}}


def _value(value: Any) -> Any:
    if isinstance(value, constraints.Constraint):
        return {"constraint": describe_support(value)}
    if value is None or isinstance(value, (bool, str)):
        return value
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise AviError(f"A support's attribute {value!r} is not a number or an array of numbers.")
    return array.tolist() if array.ndim == 0 else {"array": array.tolist()}


def restore_support(description: Mapping[str, Any]) -> constraints.Constraint:
    """The constraint of :func:`describe_support`'s description.

    Raises:
        AviError: a name or class this NumPyro does not have.
    """
    if "name" in description:
        support = getattr(constraints, description["name"], None)
        if not isinstance(support, constraints.Constraint):
            raise AviError(f"This NumPyro has no constraint {description['name']!r}.")
        return support
    cls = getattr(constraints, description["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, constraints.Constraint)):
        raise AviError(f"This NumPyro has no constraint class {description['class']!r}.")
    support = cls.__new__(cls)
    support.__dict__.update({k: _restore_value(v) for k, v in description["fields"].items()})
    return support


def _restore_value(value: Any) -> Any:
    if isinstance(value, dict) and "constraint" in value:
        return restore_support(value["constraint"])
    if isinstance(value, dict) and "array" in value:
        return np.asarray(value["array"])
    return value


def _describe_site(site: SiteLayout, support: constraints.Constraint) -> dict[str, Any]:
    fields = {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(site).items()
    }
    return {**fields, "support": describe_support(support)}


def describe_layout(traced: TracedModel) -> dict[str, Any]:
    """The sites of a traced model as JSON data (see the module docstring)."""
    layout = traced.layout
    return {
        "plate": layout.plate,
        "num_data": layout.num_data,
        "globals": [_describe_site(s, traced.supports[s.name]) for s in layout.globals],
        "locals": [_describe_site(s, traced.supports[s.name]) for s in layout.locals],
        "observed": list(layout.observed),
        "per_datum_args": list(layout.per_datum_args),
        "per_datum_kwargs": list(layout.per_datum_kwargs),
        "params": [_describe_param(p) for p in layout.params],
    }


def _describe_param(param: ParamLayout) -> dict[str, Any]:
    return {
        "name": param.name,
        "constraint": describe_support(param.constraint),
        "shapes": [list(shape) for shape in param.shapes],
        "paths": list(param.paths),
    }


def _restore_param(description: Mapping[str, Any]) -> ParamLayout:
    """A parameter site's layout; its tree structure is known without the model only for a
    plain array (a module's comes from the model's trace on the first data)."""
    paths = tuple(description["paths"])
    return ParamLayout(
        name=description["name"],
        constraint=restore_support(description["constraint"]),
        shapes=tuple(tuple(shape) for shape in description["shapes"]),
        paths=paths,
        treedef=jax.tree_util.tree_structure(0) if paths == ("",) else None,
    )


def _site_layout(description: Mapping[str, Any]) -> SiteLayout:
    fields = {f.name for f in dataclasses.fields(SiteLayout)}
    values = {k: v for k, v in description.items() if k in fields}
    for key in ("shape", "unconstrained_shape"):
        values[key] = tuple(values[key])
    return SiteLayout(**values)


def restore_traced(description: Mapping[str, Any], model: Model) -> TracedModel:
    """A :class:`TracedModel` of ``model`` from :func:`describe_layout`'s description, without
    data: no trace and no observed values (new data are traced when they come).

    Raises:
        AviError: a description this avi cannot read.
    """
    try:
        layout = ModelLayout(
            plate=description["plate"],
            num_data=int(description["num_data"]),
            globals=tuple(_site_layout(s) for s in description["globals"]),
            locals=tuple(_site_layout(s) for s in description["locals"]),
            observed=tuple(description["observed"]),
            per_datum_args=tuple(description["per_datum_args"]),
            per_datum_kwargs=tuple(description["per_datum_kwargs"]),
            params=tuple(_restore_param(p) for p in description.get("params", [])),
        )
        sites = [*description["globals"], *description["locals"]]
        supports = {s["name"]: restore_support(s["support"]) for s in sites}
    except (KeyError, TypeError) as error:
        raise AviError(f"The model description is incomplete or damaged ({error!r}).") from error
    return TracedModel(model, layout, supports, {}, {})


_COMPARED = ("shape", "unconstrained_shape", "event_dim", "plate_axis", "support")


def _roles(description: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    return {
        **{s["name"]: ("global", s) for s in description["globals"]},
        **{s["name"]: ("local", s) for s in description["locals"]},
    }


def site_differences(expected: Mapping[str, Any], traced: TracedModel) -> list[str]:
    """How the sites of ``traced`` differ from the description ``expected``, one phrase per
    difference (empty when they match); the data size is not compared."""
    new = describe_layout(traced)
    differences = []
    if new["plate"] != expected["plate"]:
        differences.append(f"the data plate is '{new['plate']}', not '{expected['plate']}'")
    old_sites, new_sites = _roles(expected), _roles(new)
    for name, (role, site) in old_sites.items():
        if name not in new_sites:
            differences.append(f"{role} latent site '{name}' is missing")
            continue
        new_role, new_site = new_sites[name]
        if new_role != role:
            differences.append(f"site '{name}' is {new_role}, it was {role}")
        for key in _COMPARED:
            if new_site[key] != site[key]:
                differences.append(
                    f"site '{name}' has {key} {_text(new_site[key])}, it was {_text(site[key])}"
                )
    for name, (role, _) in new_sites.items():
        if name not in old_sites:
            differences.append(f"{role} latent site '{name}' is new")
    if not differences and list(new_sites) != list(old_sites):
        differences.append(f"the latent sites come in another order ({', '.join(new_sites)})")
    differences.extend(_param_differences(expected.get("params", []), new["params"]))
    if new["observed"] != expected["observed"]:
        differences.append(
            f"the observed sites are {new['observed']}, they were {expected['observed']}"
        )
    return differences


def _param_differences(
    expected: list[Mapping[str, Any]], new: list[Mapping[str, Any]]
) -> list[str]:
    """How the learned parameter sites differ (names, constraints, leaves and their shapes)."""
    old_sites = {p["name"]: p for p in expected}
    new_sites = {p["name"]: p for p in new}
    differences = [f"parameter site '{n}' is missing" for n in old_sites if n not in new_sites]
    differences += [f"parameter site '{n}' is new" for n in new_sites if n not in old_sites]
    for name in old_sites.keys() & new_sites.keys():
        for key in ("constraint", "paths", "shapes"):
            if new_sites[name][key] != old_sites[name][key]:
                differences.append(
                    f"parameter site '{name}' has {key} {_text(new_sites[name][key])}, it was "
                    f"{_text(old_sites[name][key])}"
                )
    return differences


def _text(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:
        return value["name"]
    if isinstance(value, dict) and "class" in value:
        fields = ", ".join(f"{k}={_text(v)}" for k, v in value["fields"].items())
        return f"{value['class'].lstrip('_')}({fields})"
    if isinstance(value, dict) and "constraint" in value:
        return _text(value["constraint"])
    if isinstance(value, list):
        return str(tuple(value))
    return str(value)
