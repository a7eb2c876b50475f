"""The standard multilevel models of the radon data (Gelman and Hill 2006, ch. 12-13), written
as users write them: county latents in a ``county`` plate, the houses in a ``house`` plate,
joined by the county index (a grouped model, :mod:`avi.data.groups`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def radon_intercept(county, floor, num_counties, log_radon=None):
    """Varying intercepts: y_i ~ N(a_county[i] + beta floor_i, sigma_y), a_j ~ N(mu, sigma_a)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(5.0))
    with numpyro.plate("county", num_counties):
        a = numpyro.sample("a", dist.Normal(mu, sigma_a))
    with numpyro.plate("house", county.shape[0]):
        numpyro.sample("y", dist.Normal(a[county] + beta * floor, sigma_y), obs=log_radon)


def radon_slope(county, floor, num_counties, log_radon=None):
    """Varying intercepts and slopes: y_i ~ N(a_j + b_j floor_i, sigma_y) for j = county[i],
    a_j ~ N(mu_a, sigma_a), b_j ~ N(mu_b, sigma_b) (independent, as in Gelman and Hill's first
    varying-slope fit)."""
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 10.0))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(5.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(5.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(5.0))
    with numpyro.plate("county", num_counties):
        a = numpyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = numpyro.sample("b", dist.Normal(mu_b, sigma_b))
    with numpyro.plate("house", county.shape[0]):
        mean = a[county] + b[county] * jnp.asarray(floor)
        numpyro.sample("y", dist.Normal(mean, sigma_y), obs=log_radon)
