"""A pure log joint density over flat unconstrained latent vectors.

With ``T = biject_to(support)`` and unconstrained ``u``, the density that is integrated is

    log p(x, T(u)) + log |det J_T(u)|.

:func:`log_joint` evaluates it for one draw of the flat global vector ``theta_u`` (shape
``(D_g,)``) and the flat local matrix ``z_u`` (shape ``(B, D_l)``) on a batch of ``B`` data,
scaling every term inside the data plate by ``N / B`` so that the result is an unbiased estimate
of the full-data log joint (stochastic VI, Hoffman et al. 2013). The model's learned parameters
(:mod:`avi.model.params`) are substituted at the given unconstrained values u as phi = T(u):
log p(x, T(theta), T(z); phi).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost

from avi.model.layout import Model, ModelLayout, unflatten_globals, unflatten_locals
from avi.model.params import unflatten_params
from avi.model.trace import plate_names


def _is_identity_support(support: constraints.Constraint) -> bool:
    return support is constraints.real or (
        isinstance(support, constraints.independent) and support.base_constraint is constraints.real
    )


def constrained_trace(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
    params: Mapping[str, tuple[jax.Array, ...]] | None = None,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """Run the model at the constrained values T(theta), T(z) of a batch of B = z.shape[0] data
    and at the learned parameters' unconstrained values ``params`` (site -> leaves; None: the
    model has none).

    On a batch smaller than the data, the data plate's indices are substituted by arange(B), so
    that a plate whose size the model takes from its arguments and one declared with N both
    have B entries.

    Returns:
        The trace, and for every constrained latent site its log|det J| with the site's batch
        shape (unconstrained sites have none).
    """
    batch_size = z.shape[0]
    unconstrained = {**unflatten_globals(layout, theta), **unflatten_locals(layout, z)}
    log_dets: dict[str, jax.Array] = {}
    assert params is not None or not layout.params, "the model's learned parameters are missing"
    learned = unflatten_params(layout.params, params) if layout.params else {}

    def constrain(site: Mapping[str, Any]) -> Any:
        if site["type"] == "param":
            return learned[site["name"]]
        if site["type"] != "sample" or site["name"] not in unconstrained:
            return None
        u = unconstrained[site["name"]]
        support = site["fn"].support
        if _is_identity_support(support):
            return u
        transform = biject_to(support)
        value = transform(u)
        log_det = transform.log_abs_det_jacobian(u, value)
        event_dim = len(site["fn"].event_shape)
        log_dets[site["name"]] = sum_rightmost(
            log_det, jnp.ndim(log_det) - jnp.ndim(value) + event_dim
        )
        return value

    substituted = handlers.substitute(handlers.seed(model, rng_seed=0), substitute_fn=constrain)
    if batch_size != layout.num_data:
        substituted = handlers.substitute(substituted, data={layout.plate: jnp.arange(batch_size)})
    return handlers.trace(substituted).get_trace(*args, **kwargs), log_dets


def _scaled_terms(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
    params: Mapping[str, tuple[jax.Array, ...]] | None,
) -> Iterator[tuple[bool, bool, jax.Array]]:
    """(is observed, is in the data plate, scaled log density with its log|det J|) of every
    sample site, in model order: each in-plate term scaled by N / B, as :func:`log_joint` sums
    them."""
    batch_size = z.shape[0]
    trace, log_dets = constrained_trace(model, layout, args, kwargs, theta, z, params)
    declared_size = trace[layout.plate]["args"][0] if layout.plate in trace else batch_size
    data_scale = layout.num_data / declared_size
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        scale = 1.0 if site["scale"] is None else site["scale"]
        in_plate = layout.plate in plate_names(site)
        if in_plate:
            scale = scale * data_scale
        term = jnp.sum(site["fn"].log_prob(site["value"]))
        if name in log_dets:
            term = term + jnp.sum(log_dets[name])
        yield bool(site["is_observed"]), in_plate, scale * term


def log_joint_parts(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
    params: Mapping[str, tuple[jax.Array, ...]] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`log_joint` split into (observed sites' terms, latent sites' terms with the
    log|det J|), each scaled as there: the likelihood and the prior of the KL warm-up."""
    likelihood, prior = jnp.zeros(()), jnp.zeros(())
    for observed, _, term in _scaled_terms(model, layout, args, kwargs, theta, z, params):
        if observed:
            likelihood = likelihood + term
        else:
            prior = prior + term
    return likelihood, prior


def log_joint(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
    params: Mapping[str, tuple[jax.Array, ...]] | None = None,
) -> jax.Array:
    """Unbiased estimate of log p(x, T(theta), T(z)) + log|det J| on a batch.

    Args:
        model: the NumPyro model.
        layout: its layout from :func:`trace_model`.
        args: positional arguments, per-datum ones already sliced to the batch.
        kwargs: keyword arguments, per-datum ones already sliced to the batch.
        theta: flat unconstrained globals, shape (D_g,).
        z: flat unconstrained locals of the batch, shape (B, D_l).
        params: the learned parameters' unconstrained leaves per site (None: none).

    Returns:
        A scalar: global terms plus (N / B) times the sum of the batch's in-plate terms.
    """
    total = jnp.zeros(())
    for _, _, term in _scaled_terms(model, layout, args, kwargs, theta, z, params):
        total = total + term
    return total


def log_joint_by_plate(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
    params: Mapping[str, tuple[jax.Array, ...]] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`log_joint` split into (the terms of sites outside the data plate, the in-plate
    terms scaled by N / B): on a batch of one datum n the second is N log p(x_n, z_n | theta),
    the datum's own term (the per-datum scores of :mod:`avi.vi.certify_params`)."""
    outside, inside = jnp.zeros(()), jnp.zeros(())
    for _, in_plate, term in _scaled_terms(model, layout, args, kwargs, theta, z, params):
        if in_plate:
            inside = inside + term
        else:
            outside = outside + term
    return outside, inside
