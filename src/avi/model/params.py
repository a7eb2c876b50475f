"""Learned model parameters: ``numpyro.param`` sites and modules of ``numpyro.contrib.module``.

A parameter site phi is a point, not a latent: it is learned by maximising the ELBO
L(lambda, phi) = E_q[log p(x, theta, z; phi) - log q(theta, z)] jointly with the variational
parameters lambda (variational EM; a VAE's decoder, Kingma and Welling 2014). As NumPyro's SVI
does, a parameter with a ``constraint`` is optimised in unconstrained space, phi = T(u) with
T = ``biject_to(constraint)``; a module's parameters (``eqx_module``, ``flax_module``) are a
pytree of real arrays. ``random_eqx_module`` / ``random_flax_module`` draw the weights that
have priors as global latents, and NumPyro still registers the module's parameter site: its
leaves that a prior replaces do not reach the model, their gradient is zero and they stay
where they started, while the leaves without a prior are learned.

The unconstrained values are held per site as the tuple of the value's leaves (in
``jax.tree_util`` order) so that they can be saved and compared by shape without the model;
the site's tree structure comes from the model's trace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

__all__ = [
    "ParamLayout",
    "constrain_params",
    "initial_model_params",
    "param_layouts",
    "unflatten_params",
]

ModelParams = dict[str, tuple[jax.Array, ...]]
"""Unconstrained learned parameters: site name -> the leaves of its value."""


@dataclass(frozen=True)
class ParamLayout:
    """One learned parameter site.

    Attributes:
        name: the site name (``"decoder$params"`` for ``eqx_module("decoder", ...)``).
        constraint: the site's ``constraint`` (``constraints.real`` for modules).
        shapes: the constrained shape of each leaf of its value.
        paths: each leaf's key path in the value (``jax.tree_util.keystr``; "" for an array).
        treedef: the value's tree structure; None for a fit loaded without running the model.
    """

    name: str
    constraint: constraints.Constraint
    shapes: tuple[tuple[int, ...], ...]
    paths: tuple[str, ...]
    treedef: Any = None

    @property
    def size(self) -> int:
        """Number of unconstrained scalar parameters."""
        transform = biject_to(self.constraint)
        return sum(math.prod(transform.inverse_shape(shape)) for shape in self.shapes)


def param_layouts(trace: Mapping[str, Any]) -> tuple[ParamLayout, ...]:
    """The learned parameter sites of a NumPyro trace, in model order."""
    layouts = []
    for name, site in trace.items():
        if site["type"] != "param":
            continue
        value = site["value"]
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(value)
        layouts.append(
            ParamLayout(
                name=name,
                constraint=site["kwargs"].get("constraint", constraints.real),
                shapes=tuple(tuple(jnp.shape(leaf)) for _, leaf in with_paths),
                paths=tuple(jax.tree_util.keystr(path) for path, _ in with_paths),
                treedef=treedef,
            )
        )
    return tuple(layouts)


def initial_model_params(
    layouts: tuple[ParamLayout, ...], trace: Mapping[str, Any]
) -> ModelParams:
    """u = T^{-1}(phi_0) of every parameter site's value in ``trace`` (its initial value)."""
    values = {}
    for layout in layouts:
        transform = biject_to(layout.constraint)
        leaves = jax.tree_util.tree_leaves(trace[layout.name]["value"])
        values[layout.name] = tuple(
            jnp.asarray(transform.inv(jnp.asarray(leaf, jnp.float32)), jnp.float32)
            for leaf in leaves
        )
    return values


def constrain_params(
    layouts: tuple[ParamLayout, ...], params: Mapping[str, tuple[jax.Array, ...]]
) -> dict[str, tuple[jax.Array, ...]]:
    """phi = T(u) leaf by leaf, per site (still as tuples of leaves)."""
    return {
        layout.name: tuple(biject_to(layout.constraint)(u) for u in params[layout.name])
        for layout in layouts
    }


def unflatten_params(
    layouts: tuple[ParamLayout, ...], params: Mapping[str, tuple[jax.Array, ...]]
) -> dict[str, Any]:
    """The constrained values of the sites as the model sees them (each leaf tuple put back
    into its site's tree structure), for ``numpyro.handlers.substitute``."""
    constrained = constrain_params(layouts, params)
    return {
        layout.name: jax.tree_util.tree_unflatten(layout.treedef, constrained[layout.name])
        for layout in layouts
    }
