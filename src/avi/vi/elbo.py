"""The reparameterized Monte Carlo ELBO with minibatch scaling, written against the factor
protocol (:mod:`avi.families.factor`).

With q(theta) = N(m, diag(s^2)) and the local factors q(z_n | lambda_n) in unconstrained space,
draws theta = m + s * eps and z_n = T_{lambda_n}(eta_n) give

    ELBO = E_q[log p(x, theta, z) + log|J|] + H[q(theta)] + sum_n H[q(z_n | lambda_n)],

with each entropy analytic where the factor's distribution has one (the diagonal Gaussian:
sum_d log sigma_nd + D_l / 2 log(2 pi e)) and -log q(z_n) of the draw otherwise. On a batch B
of the N data, the local entropy and the in-plate log terms are scaled by N / |B|, which keeps
the estimate unbiased (Hoffman et al. 2013, stochastic VI).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from avi.data.rows import slice_arguments
from avi.families import Diagonal
from avi.model import log_joint
from avi.vi.problem import Problem, VariationalParams

GLOBAL_FACTOR = Diagonal()
"""q(theta): one diagonal Gaussian over the unconstrained globals."""


def global_distribution(params: VariationalParams) -> dist.Distribution:
    """q(theta) as a distribution over the flat unconstrained globals (D_g,)."""
    return GLOBAL_FACTOR.distribution(
        {"loc": params.global_loc, "log_scale": params.global_log_scale}
    )


def batch_factors(
    params: VariationalParams, problem: Problem, index: jax.Array | None
) -> dict[str, jax.Array]:
    """lambda of the local factors of the batch (all data when index is None)."""
    return problem.family.local_params(params.local, problem.local_data, index)


def entropy(q: dist.Distribution, draws: jax.Array) -> jax.Array:
    """H[q] summed over q's batch: analytic where q has it, else -log q(draws) per draw
    (draws with a leading particle axis)."""
    try:
        return jnp.sum(q.entropy())
    except NotImplementedError:
        log_q = q.log_prob(draws)
        return -jnp.sum(log_q.reshape(log_q.shape[0], -1), axis=1)


def _frozen(lam: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return jax.lax.stop_gradient(dict(lam))


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
    factor = problem.family.factor
    lam = batch_factors(params, problem, None if tables_gathered else index)
    batch_size = next(iter(lam.values())).shape[0]
    data_scale = layout.num_data / batch_size
    global_key, local_key = jax.random.split(key)
    q_global = global_distribution(params)
    q_local = factor.distribution(lam)
    theta = q_global.rsample(global_key, (num_particles,))
    z = q_local.rsample(local_key, (num_particles,))
    if index is None:
        args, kwargs = problem.args, problem.kwargs
    else:
        args, kwargs = slice_arguments(layout, problem.args, problem.kwargs, index)
    log_p = jax.vmap(lambda t, zz: log_joint(problem.model, layout, args, kwargs, t, zz))(theta, z)
    if not stop_gradient_entropy_params:
        return log_p + entropy(q_global, theta) + data_scale * entropy(q_local, z)
    frozen_global = GLOBAL_FACTOR.distribution(
        _frozen({"loc": params.global_loc, "log_scale": params.global_log_scale})
    )
    log_q_local = jnp.sum(factor.distribution(_frozen(lam)).log_prob(z), axis=1)
    return log_p - frozen_global.log_prob(theta) - data_scale * log_q_local
