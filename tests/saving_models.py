"""Models and a user's encoder shared by the saving tests and the fresh processes they start."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

NUM_DATA = 24


def data(seed: int = 0, num_data: int = NUM_DATA) -> tuple[np.ndarray, np.ndarray]:
    """A covariate x and an outcome y."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num_data).astype(np.float32)
    return x, (x + rng.normal(size=num_data)).astype(np.float32)


def model(x, y):
    """A positive global scale and a real local per datum."""
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(x, 1.0))
        numpyro.sample("y", dist.Normal(z, noise), obs=y)


def positive_local(x, y):
    """As :func:`model`, with a positive local: another support for site 'z'."""
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.LogNormal(x, 1.0))
        numpyro.sample("y", dist.Normal(z, noise), obs=y)


def renamed_global(x, y):
    """As :func:`model`, with the global named 'sigma'."""
    noise = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(x, 1.0))
        numpyro.sample("y", dist.Normal(z, noise), obs=y)


class Affine(eqx.Module):
    """A user's encoder: loc = w . features + b, log_scale = c."""

    weight: jax.Array
    bias: jax.Array
    log_scale: jax.Array

    def __init__(self, in_size: int, key: jax.Array) -> None:
        self.weight = 0.1 * jax.random.normal(key, (1, in_size))
        self.bias = jnp.zeros(1)
        self.log_scale = jnp.full(1, -1.0)

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.weight @ features + self.bias, self.log_scale


def affine_skeleton() -> Affine:
    """What ``avi infer --encoder saving_models.py:affine_skeleton`` calls: an Affine of the
    saved one's sizes."""
    return Affine(2, jax.random.PRNGKey(0))
