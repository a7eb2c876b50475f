"""The factors of the joint and their gradients in the local latents.

The joint log p(theta, z, x) is the sum of the per-site log densities log p_s, one factor per
sample site s. The optimal factor q*(z_n) of Lemma 3.1 depends on what shares a factor with
z_n, which the gradients g_s = d log p_s / dz (in unconstrained coordinates) reveal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from avi.structure.problem import Problem

Gradients = dict[str, dict[str, jax.Array]]
"""site s -> local latent L -> d log p_s / du_L, or a per-datum summary of it."""


def _arguments(
    problem: Problem, data: Sequence[jax.Array | None]
) -> tuple[list[Any], dict[str, Any], dict[str, jax.Array]]:
    """Arguments and observed values with the per-datum arrays ``data`` (aligned with
    ``problem.inputs``; None keeps the model's own) in place."""
    args, kwargs, observed = list(problem.args), dict(problem.kwargs), {}
    for item, value in zip(problem.inputs, data, strict=True):
        if value is not None:
            {"arg": args, "kwarg": kwargs, "site": observed}[item.kind][item.key] = value
    return args, kwargs, observed


def _trace(
    problem: Problem, u: Mapping[str, jax.Array], data: Sequence[jax.Array | None]
) -> dict[str, Any]:
    """Run the model with every latent at ``biject_to(support)(u)`` and the given data.

    The support is that of this very run, so supports that depend on other latents stay
    consistent; ``u`` uniform on (-2, 2) is NumPyro's ``init_to_uniform``.
    """
    args, kwargs, observed = _arguments(problem, data)

    def constrain(message: Mapping[str, Any]) -> jax.Array | None:
        if message["type"] != "sample" or message["name"] not in u:
            return None
        return biject_to(message["fn"].support)(u[message["name"]])

    model = handlers.substitute(problem.model, data=observed)
    model = handlers.substitute(model, substitute_fn=constrain)
    model = handlers.seed(model, rng_seed=0)  # outermost: substituted sites draw no key
    return handlers.trace(model).get_trace(*args, **kwargs)


def _site_log_densities(
    problem: Problem, u: Mapping[str, jax.Array], data: Sequence[jax.Array]
) -> dict[str, jax.Array]:
    """log p_s for every sample site s (scaled and summed): the factors of the joint."""
    densities = {}
    for name, site in _trace(problem, u, data).items():
        if site["type"] == "sample":
            log_prob = site["fn"].log_prob(site["value"])
            scale = site["scale"]
            densities[name] = jnp.sum(log_prob if scale is None else scale * log_prob)
    return densities


def site_gradients(
    problem: Problem,
    u_globals: Mapping[str, jax.Array],
    u_locals: Mapping[str, jax.Array],
    data: Sequence[jax.Array],
) -> Gradients:
    """g_s = d log p_s / du_L for every site s and local latent L (unconstrained coordinates)."""

    def densities(v: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return _site_log_densities(problem, {**u_globals, **v}, data)

    return jax.jacrev(densities)(dict(u_locals))


def total_gradient(
    problem: Problem,
    u_globals: Mapping[str, jax.Array],
    u_locals: Mapping[str, jax.Array],
    data: Sequence[jax.Array],
) -> dict[str, jax.Array]:
    """g = d log p(theta, z, x) / du_L = sum_s g_s for every local latent L: one reverse pass."""

    def total(v: dict[str, jax.Array]) -> jax.Array:
        return sum(_site_log_densities(problem, {**u_globals, **v}, data).values())

    return jax.grad(total)(dict(u_locals))


def input_arrays(
    problem: Problem, u: Mapping[str, jax.Array], arrays: Sequence[jax.Array]
) -> list[jax.Array]:
    """Every input's array (real ones in float64), aligned with ``problem.inputs``: the
    per-datum arguments ``arrays`` and the observed values of a run at ``u``."""
    given = iter(arrays)
    data = [None if item.kind == "site" else next(given) for item in problem.inputs]
    trace = _trace(problem, u, data)
    values = [
        jnp.asarray(trace[item.key]["value"] if value is None else value)
        for item, value in zip(problem.inputs, data, strict=True)
    ]
    return [
        v.astype(jnp.float64) if item.real else v
        for item, v in zip(problem.inputs, values, strict=True)
    ]
