"""The reparameterized Monte Carlo ELBO with minibatch scaling, written against the factor
protocol (:mod:`avi.families.factor`).

With q(theta) = N(m, diag(s^2)) and the local factors q(z_n | lambda_n) in unconstrained space,
draws theta = m + s * eps and z_n = T_{lambda_n}(eta_n) give

    ELBO = E_q[log p(x, theta, z) + log|J|] + H[q(theta)] + sum_n H[q(z_n | lambda_n)],

with each entropy analytic where the factor's distribution has one (the diagonal Gaussian:
sum_d log sigma_nd + D_l / 2 log(2 pi e)) and -log q(z_n) of the draw otherwise. On a batch B
of the N data, the local entropy and the in-plate log terms are scaled by N / |B|, which keeps
the estimate unbiased (Hoffman et al. 2013, stochastic VI).

With the KL warm-up (``avi.fit(..., kl_warmup=W)``; Bowman et al. 2016, Sonderby et al. 2016)
the latent sites' log density and the entropies are weighted by beta_t = min(1, (t + 1) / W):
E_q[log p(x | theta, z)] + beta_t (E_q[log p(theta, z)] + H[q]), the ELBO from step W on.

The model's learned parameters phi (``params.model``) enter only through log p(x, theta, z;
phi): the same estimate, differentiated in phi, is the unbiased gradient of the ELBO in phi
(minibatches included, the in-plate terms being scaled by N / |B|).

A family given the globals (``Amortized(given_globals=True)``) draws z_n from
q(z_n | theta_s, x_n) for each particle's theta_s, and its local entropy is that particle's
conditional entropy: E_q(theta) H[q(z | theta)] + H[q(theta)] = H[q(theta, z)].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from avi.data.rows import slice_arguments
from avi.families import Diagonal
from avi.families.protocol import factors_given, given_globals
from avi.model import log_joint, log_joint_parts
from avi.vi.problem import Problem, VariationalParams

GLOBAL_FACTOR = Diagonal()
"""q(theta): one diagonal Gaussian over the unconstrained globals."""


def global_distribution(params: VariationalParams) -> dist.Distribution:
    """q(theta) as a distribution over the flat unconstrained globals (D_g,)."""
    return GLOBAL_FACTOR.distribution(
        {"loc": params.global_loc, "log_scale": params.global_log_scale}
    )


def entropy(q: dist.Distribution, draws: jax.Array) -> jax.Array:
    """H[q] summed over q's batch: analytic where q has it, else -log q(draws) per draw
    (draws with a leading particle axis)."""
    try:
        return jnp.sum(q.entropy())
    except NotImplementedError:
        log_q = q.log_prob(draws)
        return -jnp.sum(log_q.reshape(log_q.shape[0], -1), axis=1)


def _per_particle_entropy(q: dist.Distribution, draws: jax.Array) -> jax.Array:
    """(S,) H[q(. | theta_s)] summed over the batch, for factors with leading axes (S, B)."""
    try:
        values = q.entropy()
    except NotImplementedError:
        values = -q.log_prob(draws)
    return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


def symmetric(factor: Any) -> bool:
    """Whether the factor's distribution is symmetric about its mean (a Gaussian: z and
    2 E[z] - z are equally likely), so that reflected draws are draws of it."""
    return bool(getattr(factor, "symmetric", False))


def paired(problem: Problem, antithetic: bool) -> bool:
    """Whether draws asked to be ``antithetic`` are drawn in pairs: only where theta and z are
    both reflected, i.e. the local factor is symmetric and not given the globals (z given
    each theta is drawn independently, and reflecting theta alone doubles the even part of
    the noise while cancelling little of the rest: measured at the end of a fit given the
    globals, q(theta)'s noise variance 0.37 against 0.26)."""
    return antithetic and symmetric(problem.family.factor) and not given_globals(problem.family)


def reflected(draws: jax.Array, centre: jax.Array) -> jax.Array:
    """The draws (S, ...) followed by their reflections 2 c - draws (2S, ...): antithetic
    pairs of a distribution symmetric about c. Each half is a sample of it, and the pair's
    mean cancels every term of the integrand odd in the draw's deviation from c, the linear
    one first: for a log density quadratic in the draws (a Gaussian model) the pair's
    location gradient is exact, and near a Gaussian posterior (large N) it keeps only the
    smaller even terms (antithetic variates; Hammersley and Morton 1956)."""
    return jnp.concatenate([draws, 2 * centre - draws])


def _frozen(lam: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return jax.lax.stop_gradient(dict(lam))


def _frozen_arrays(tree: Any) -> Any:
    """``tree`` (an encoder among its leaves) with every array leaf's gradient stopped."""
    return jax.tree_util.tree_map(
        lambda v: jax.lax.stop_gradient(v) if eqx.is_array(v) else v, tree
    )


def elbo_draws(
    key: jax.Array,
    params: VariationalParams,
    problem: Problem,
    index: jax.Array | None,
    num_particles: int,
    stop_gradient_entropy_params: bool = False,
    tables_gathered: bool = False,
    kl_weight: jax.Array | None = None,
    antithetic: bool = False,
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
        kl_weight: beta of the KL warm-up, E[log p(x | .)] + beta (E[log p(theta, z)] +
            H[q]) (the ELBO at beta = 1); None: the ELBO, computed in one sum.
        antithetic: draw the particles in pairs, the second of each pair the first reflected
            through q's centre (:func:`reflected`), where the local factor is symmetric
            and not given the globals (else independent draws); S must be even.

    Returns:
        (S,) unbiased estimates of the full-data ELBO.
    """
    layout = problem.layout
    factor = problem.family.factor
    conditional = given_globals(problem.family)
    global_key, local_key = jax.random.split(key)
    q_global = global_distribution(params)
    antithetic = paired(problem, antithetic)
    draws = num_particles // 2 if antithetic else num_particles
    theta = q_global.rsample(global_key, (draws,))
    if antithetic:
        theta = reflected(theta, params.global_loc)
    rows = None if tables_gathered else index
    lam = factors_given(problem.family, params.local, problem.local_data, rows, theta)
    batch_size = next(iter(lam.values())).shape[1 if conditional else 0]
    data_scale = layout.num_data / batch_size
    q_local = factor.distribution(lam)
    if conditional:  # z_n given each particle's theta
        z = q_local.rsample(local_key)
    elif antithetic:
        z = reflected(q_local.rsample(local_key, (draws,)), q_local.mean)
    else:
        z = q_local.rsample(local_key, (num_particles,))
    if index is None:
        args, kwargs = problem.args, problem.kwargs
    else:
        args, kwargs = slice_arguments(layout, problem.args, problem.kwargs, index)
    if kl_weight is None:
        log_p = jax.vmap(
            lambda t, zz: log_joint(problem.model, layout, args, kwargs, t, zz, params.model)
        )(theta, z)
        likelihood, weight = 0.0, 1.0
    else:
        likelihood, log_p = jax.vmap(
            lambda t, zz: log_joint_parts(
                problem.model, layout, args, kwargs, t, zz, params.model
            )
        )(theta, z)
        weight = kl_weight
    if not stop_gradient_entropy_params:
        local_entropy = _per_particle_entropy(q_local, z) if conditional else entropy(q_local, z)
        return likelihood + weight * (
            log_p + entropy(q_global, theta) + data_scale * local_entropy
        )
    frozen_global = GLOBAL_FACTOR.distribution(
        _frozen({"loc": params.global_loc, "log_scale": params.global_log_scale})
    )
    # Given the globals, the factors' parameters are frozen but theta's path into them is kept
    # (the path derivative of log q(theta, z), Roeder et al. 2017).
    frozen_local = (
        factors_given(problem.family, _frozen_arrays(params.local), problem.local_data, rows, theta)
        if conditional
        else _frozen(lam)
    )
    log_q_local = jnp.sum(factor.distribution(frozen_local).log_prob(z), axis=1)
    return likelihood + weight * (
        log_p - frozen_global.log_prob(theta) - data_scale * log_q_local
    )


EVALUATION_DRAWS = 4
"""Draws of one call of :data:`elbo_values` where avi evaluates the ELBO itself: the stop
rule's fixed-noise checks and the certificate's finiteness check share the program."""

elbo_values = eqx.filter_jit(elbo_draws)
""":func:`elbo_draws` compiled (the draw count and the estimator static)."""
