"""``avi.load(path, model)``: a saved fit that infers new data as the original did."""

from __future__ import annotations

import dataclasses

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions.transforms import biject_to

from avi.data.prepare import FeatureScaling
from avi.errors import AviError, FamilyError
from avi.families import Family, LocalData, as_family
from avi.model import ModelLayout
from avi.model.describe import restore_traced
from avi.result import Fit
from avi.saving.files import read_arrays, read_description
from avi.data.groups import GroupedModel, GroupSpec
from avi.saving.specs import has_user_encoder, restore_object
from avi.vi import History, State
from avi.vi.certify import BlockEvidence, Certificate
from avi.vi.problem import VariationalParams

__all__ = ["load"]


def _skeleton(
    family: Family, inputs: Mapping[str, int], layout: ModelLayout, grouped: bool
) -> Any:
    """The saved tree's structure: the family's own starting parameters, built on placeholder
    inputs of the training shapes (no data: zero-stride features; one row per group for a
    grouped model's set encoder), and the learned model parameters' leaves by their shapes."""
    global_dim, local_dim = layout.global_dim, layout.local_dim
    rows, free = int(inputs["local_rows"]), int(inputs["free_rows"])
    row = (1,) if grouped else ()
    placeholder = np.zeros((1, *row, int(inputs["features"])), np.float32)
    in_size = family.prepare(placeholder).features.shape[-1]
    features = np.broadcast_to(np.zeros((), np.float32), (rows, *row, in_size))
    slots = np.concatenate([np.arange(free), np.full(rows - free, -1)]).astype(np.int32)
    local = family.init(jax.random.PRNGKey(0), LocalData(features, slots), local_dim, global_dim)
    zeros = jnp.zeros(global_dim)
    features_like = np.zeros(int(inputs["features"]), np.float32)
    model = {
        p.name: tuple(
            jnp.zeros(biject_to(p.constraint).inverse_shape(shape), jnp.float32)
            for shape in p.shapes
        )
        for p in layout.params
    }
    return {
        "params": VariationalParams(zeros, zeros, local, model),
        "scaling": {"mean": features_like, "std": features_like},
    }


def _certificate(record: Mapping[str, Any] | None) -> Certificate | None:
    if record is None:
        return None
    blocks = tuple(BlockEvidence(**b) for b in record["blocks"])
    return Certificate(blocks, int(record["draws"]), int(record["non_finite"]))


def _history(record: Mapping[str, Any]) -> History:
    return History(
        np.asarray(record["step"], dtype=np.int64),
        np.asarray(record["elbo"], dtype=np.float64),
        np.asarray(record["wall_time"], dtype=np.float64),
        np.asarray(record.get("backoff", []), dtype=np.int64),
    )


def load(path: str | Path, model: Callable[..., Any], encoder: eqx.Module | None = None) -> Fit:
    """A fit saved by :meth:`avi.Fit.save`, for ``model``: its posterior of new data is the
    original fit's, to the bit, from one encoder pass.

    The training data are not saved, so the loaded fit answers ``posterior(new data)``,
    ``sample(n, new data)``, ``local_factors(new data)``, ``history``, ``converged`` and
    ``certificate`` (without its natural step), but not the training data's posterior
    (except F-VI's saved factors) nor ``elbo()``. ``model`` is checked against the saved
    description of its sites on the first data it sees (a model runs only on data): a model
    whose sites differ (name, role, shape, support, plate, observed sites) is refused with
    each difference named.

    Args:
        path: the folder ``fit.save`` wrote.
        model: the NumPyro model the fit was trained on (the same function; its code is not
            saved).
        encoder: only for a fit whose encoder was your own equinox Module: a module of the
            same class and sizes (any weights, e.g. ``MyEncoder(..., key=PRNGKey(0))``);
            its arrays are replaced by the saved ones. avi's encoders (``avi.MLP``,
            ``avi.Polynomial``) are rebuilt from the description.

    Raises:
        AviError: not a saved fit, a newer format, a damaged file, or parameters that do not
            fit the description.
        FamilyError: a user's encoder without ``encoder`` (or of another class or shape), or
            ``encoder`` for a fit whose encoder avi rebuilds.
    """
    if not callable(model):
        raise AviError(f"model={model!r} is not callable; give the NumPyro model function.")
    document = read_description(path)
    if encoder is not None and not has_user_encoder(document["family"]):
        raise FamilyError(
            "encoder=...: this fit's encoder is avi's own and is rebuilt from the saved "
            "description; call avi.load(path, model) without encoder."
        )
    family = as_family(restore_object(document["family"], encoder))
    traced = restore_traced(document["model"], model)
    groups = document["model"].get("groups")
    if groups is not None:
        spec = GroupSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in groups.items()})
        traced = dataclasses.replace(traced, model=GroupedModel(model, spec))
    layout = traced.layout
    like = _skeleton(family, document["inputs"], layout, groups is not None)
    tree = read_arrays(path, like, document["arrays"]["leaves"])
    training = document["training"]
    params = tree["params"]
    state = State(
        params=params,
        opt_state=None,
        stop=None,
        step=jnp.asarray(training["num_steps"]),
        skipped=jnp.asarray(training["skipped"]),
    )
    return Fit(
        traced=traced,
        problem=None,
        family=family,
        state=state,
        history=_history(training["history"]),
        stop_reason=training["stop_reason"],
        wall_time=float(training["wall_time"]),
        scaling=FeatureScaling(
            np.asarray(tree["scaling"]["mean"]), np.asarray(tree["scaling"]["std"])
        ),
        args=(),
        kwargs={},
        streamed=bool(training["streamed"]),
        known_certificate=_certificate(training["certificate"]),
    )
