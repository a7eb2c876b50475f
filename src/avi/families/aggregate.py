"""The aggregate of a family's factors over the data, (1/N) sum_n q(z | lambda_n), per site."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to

from avi.families.factor import Factor


def aggregate_factors(
    factor: Factor,
    lam: Mapping[str, jax.Array],
    sites: Iterable[Any],
    supports: Mapping[str, dist.constraints.Constraint],
) -> dict[str, dist.Distribution]:
    """Per local site (``name``, ``offset``, ``size``, ``unconstrained_shape``), the mixture
    (1/N) sum_n of the factors' marginals of that site, pushed to the site's support: a
    distribution over one datum's value of the site.

    Args:
        factor: the family's factor.
        lam: the factor parameters of the N data, each part with leading axis N.
        sites: the local sites' layouts.
        supports: site name -> its support.
    """
    result = {}
    for site in sites:
        piece = slice(site.offset, site.offset + site.size)

        def per_datum(a: jax.Array, shape: tuple[int, ...] = site.unconstrained_shape) -> jax.Array:
            return a.reshape((a.shape[0], *shape))

        component = factor.marginal(lam, piece, per_datum)
        extra = len(component.batch_shape) - 1
        if extra:
            component = component.to_event(extra)
        num_data = component.batch_shape[0]
        mixture: dist.Distribution = dist.MixtureSameFamily(
            dist.Categorical(probs=jnp.full(num_data, 1.0 / num_data)), component
        )
        support = supports[site.name]
        if support is not dist.constraints.real:
            mixture = dist.TransformedDistribution(mixture, biject_to(support))
        result[site.name] = mixture
    return result
