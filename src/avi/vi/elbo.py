"""The reparameterized Monte Carlo ELBO with analytic Gaussian entropy and minibatch scaling.

With q(theta) = N(m, diag(s^2)) and q(z_n) = N(mu_n, diag(sigma_n^2)) in unconstrained space,
draws theta = m + s * eps and z_n = mu_n + sigma_n * eta_n give

    ELBO = E_q[log p(x, theta, z) + log|J|] + H[q],
    H[q] = sum_d log s_d + sum_n sum_d log sigma_nd + (D_g + N D_l) / 2 * log(2 pi e).

On a batch B of the N data, the local entropy and the in-plate log terms are scaled by N / |B|,
which keeps the estimate unbiased (Hoffman et al. 2013, stochastic VI).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from avi.families import Family, LocalData
from avi.data.rows import slice_arguments
from avi.model import ModelLayout, log_joint

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


class VariationalParams(NamedTuple):
    """All variational parameters: the global Gaussian and the family's local parameters."""

    global_loc: jax.Array
    global_log_scale: jax.Array
    local: Any


class Problem(eqx.Module):
    """Everything the compiled ELBO needs: static model description plus data arrays.

    The static part (model, layout, family) is hashed by ``equinox.filter_jit``, so a second
    fit of the same model with data of the same shapes reuses the compiled program.
    """

    model: Callable[..., Any] = eqx.field(static=True)
    layout: ModelLayout = eqx.field(static=True)
    family: Family = eqx.field(static=True)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    local_data: LocalData


def gaussian_entropy(log_scale: jax.Array) -> jax.Array:
    """Entropy of a diagonal Gaussian with the given log standard deviations."""
    return jnp.sum(log_scale) + log_scale.size * _HALF_LOG_2PI_E


def batch_factors(
    params: VariationalParams, problem: Problem, index: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(loc, log_scale) of the local factors of the batch (all data when index is None)."""
    return problem.family.local_params(params.local, problem.local_data, index)


def elbo_draws(
    key: jax.Array,
    params: VariationalParams,
    problem: Problem,
    index: jax.Array | None,
    num_particles: int,
    stop_gradient_entropy_params: bool = False,
    tables_gathered: bool = False,
) -> jax.Array:
    """ELBO estimates, one per particle, on the batch ``index`` (None: all data).

    Args:
        key: PRNG key.
        params: variational parameters.
        problem: the model and data.
        index: (B,) data indices of the batch, or None for the full data.
        num_particles: number of Monte Carlo draws S.
        stop_gradient_entropy_params: use the sticking-the-landing estimator (Roeder et al.
            2017): the entropy is replaced by -log q(draw) with the parameters of q held fixed,
            whose gradient vanishes at an exact fit.
        tables_gathered: the family's per-datum tables in ``params`` already hold only the
            batch's rows (the lazy minibatch update of :mod:`avi.vi.algorithm`).

    Returns:
        (S,) unbiased estimates of the full-data ELBO.
    """
    layout = problem.layout
    loc, log_scale = batch_factors(params, problem, None if tables_gathered else index)
    batch_size = loc.shape[0]
    data_scale = layout.num_data / batch_size
    global_key, local_key = jax.random.split(key)
    eps = jax.random.normal(global_key, (num_particles, layout.global_dim))
    eta = jax.random.normal(local_key, (num_particles, batch_size, layout.local_dim))
    theta = params.global_loc + jnp.exp(params.global_log_scale) * eps
    z = loc + jnp.exp(log_scale) * eta
    if index is None:
        args, kwargs = problem.args, problem.kwargs
    else:
        args, kwargs = slice_arguments(layout, problem.args, problem.kwargs, index)
    log_p = jax.vmap(lambda t, zz: log_joint(problem.model, layout, args, kwargs, t, zz))(theta, z)
    if not stop_gradient_entropy_params:
        entropy = gaussian_entropy(params.global_log_scale) + data_scale * gaussian_entropy(
            log_scale
        )
        return log_p + entropy
    frozen_global = jax.lax.stop_gradient((params.global_loc, params.global_log_scale))
    frozen_local = jax.lax.stop_gradient((loc, log_scale))
    log_q_global = _diag_normal_log_prob(theta, *frozen_global, axes=(1,))
    log_q_local = _diag_normal_log_prob(z, *frozen_local, axes=(1, 2))
    return log_p - log_q_global - data_scale * log_q_local


def _diag_normal_log_prob(
    x: jax.Array, loc: jax.Array, log_scale: jax.Array, axes: tuple[int, ...]
) -> jax.Array:
    standardized = (x - loc) * jnp.exp(-log_scale)
    log_density = -0.5 * standardized**2 - log_scale - 0.5 * math.log(2 * math.pi)
    return jnp.sum(log_density, axis=axes)
