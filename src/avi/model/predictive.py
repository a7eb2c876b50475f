"""What a model computes from posterior draws of its latents: deterministic sites, replicated
observations and pointwise log likelihoods, each with its axes named after the model's plates.

NumPyro's :class:`numpyro.infer.Predictive` runs the model once per draw with the latents
substituted; it returns an observed site's *data*, so the replicated observations come from a
run in which every observed site is sampled instead (:class:`_Unobserved`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.infer.util import log_likelihood
from numpyro.primitives import Messenger

from avi.model.layout import Model


class _Unobserved(Messenger):
    """Sample every observed site from its distribution (posterior predictive replicates)."""

    def process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["value"], msg["is_observed"] = None, False


def _replicated(model: Model) -> Model:
    def sampled(*args: Any, **kwargs: Any) -> Any:
        with _Unobserved():
            return model(*args, **kwargs)

    return sampled


class Derived(NamedTuple):
    """Arrays with a leading draw axis, per site.

    Attributes:
        deterministic: the model's deterministic sites.
        replicated: each observed site sampled given the draw (posterior predictive).
        log_likelihood: each observed site's log density per datum of the data plate (the
            other axes summed), shape (draws, N).
        observed: each observed site's data.
    """

    deterministic: dict[str, np.ndarray]
    replicated: dict[str, np.ndarray]
    log_likelihood: dict[str, np.ndarray]
    observed: dict[str, np.ndarray]


def site_dims(site: Mapping[str, Any], plate: str, name: str) -> list[str]:
    """Names of a site value's axes: the data plate's axis by the plate's name, the others
    ``{name}_dim_{i}`` (ArviZ's convention)."""
    shape = np.shape(site["value"])
    dims = [f"{name}_dim_{i}" for i in range(len(shape))]
    batch_ndim = len(shape) - len(getattr(site.get("fn"), "event_shape", ()))
    for frame in site["cond_indep_stack"]:
        axis = batch_ndim + frame.dim
        if 0 <= axis < len(shape) and shape[axis] == frame.size:
            dims[axis] = frame.name
    return dims


def deterministic(
    model: Model,
    draws: Mapping[str, np.ndarray],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    trace: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """The model's deterministic sites at each draw of its latents (site -> (S, *shape))."""
    names = [n for n, s in trace.items() if s["type"] == "deterministic" and n not in draws]
    if not names:
        return {}
    values = Predictive(model, posterior_samples=dict(draws), return_sites=names)
    return {k: np.asarray(v) for k, v in values(jax.random.PRNGKey(0), *args, **kwargs).items()}


def derived(
    key: jax.Array,
    model: Model,
    draws: Mapping[str, np.ndarray],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    trace: Mapping[str, Any],
    plate: str,
) -> Derived:
    """Deterministic sites, replicates and per-datum log likelihoods of ``draws`` (latent site
    -> (S, *shape)) for the model on ``args``; ``trace`` is a trace of it on the same data."""
    deterministic_names = [
        n for n, s in trace.items() if s["type"] == "deterministic" and n not in draws
    ]
    observed_names = [
        n for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]
    ]
    deterministic_key, replicate_key = jax.random.split(key)
    deterministic = {}
    if deterministic_names:
        values = Predictive(model, posterior_samples=dict(draws), return_sites=deterministic_names)
        deterministic = values(deterministic_key, *args, **kwargs)
    replicated = {}
    if observed_names:
        values = Predictive(
            _replicated(model), posterior_samples=dict(draws), return_sites=observed_names
        )
        replicated = values(replicate_key, *args, **kwargs)
    pointwise = log_likelihood(handlers.seed(model, 0), dict(draws), *args, **kwargs)
    per_datum = {}
    for name, value in pointwise.items():
        site = trace[name]
        value = np.asarray(value)
        frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
        if frame is None:
            continue
        axis = np.ndim(value) + frame.dim  # log densities have the batch shape: dims from the end
        moved = np.moveaxis(value, axis, 1)
        per_datum[name] = moved.reshape(moved.shape[0], moved.shape[1], -1).sum(axis=2)
    observed = {n: np.asarray(trace[n]["value"]) for n in observed_names}
    return Derived(
        {k: np.asarray(v) for k, v in deterministic.items()},
        {k: np.asarray(v) for k, v in replicated.items()},
        per_datum,
        observed,
    )
