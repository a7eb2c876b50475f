"""Leave-one-out cross-validation from a variational fit: PSIS-LOO on the globals' marginal,
corrected for q.

``az.loo`` on draws of q with the conditional log likelihood (``fit.to_arviz(log_likelihood=
"conditional")``) makes two approximations that fail together on latent-variable models. Its
log likelihood p(x_n | theta, z_n) conditions on the datum's own latent z_n, whose posterior
given x_n is far narrower than its distribution once x_n is left out (its prior), so the
leave-one-out importance ratios 1 / p(x_n | theta, z_n) are heavy-tailed (Vehtari et al. 2016
integrate such latents out; Merkle et al. 2019 on marginal against conditional likelihoods);
and it treats draws of q as posterior draws. Eight schools, mean-field: Pareto k 0.83-1.82 on
every school. :meth:`avi.Fit.to_arviz`'s default log likelihood removes the first
(:func:`marginal_log_likelihood`, the l_n below at q's draws); ``az.loo`` on it still takes q
for the posterior.

Here both are removed. The datum's latents are integrated out with its own factor as the
importance proposal, K draws z_k ~ q(z_n | ...):

    l_n(theta) = log p(x_n | theta) ~= log 1/K sum_k p(x_n, z_k | theta) / q(z_k)

(a datum of the data plate: every site of its slice, the prior of z_n and the likelihood of
x_n; for grouped data, a group). The globals are drawn from a defensive proposal g(theta):
per coordinate a Student-t with :data:`PROPOSAL_DOF` degrees of freedom, q(theta)'s location
and :data:`PROPOSAL_WIDTH` times its scale. Mean-field q(theta) has the posterior's
conditional variance, not its marginal one (narrower wherever the globals correlate with the
locals: eight schools' tau), and importance weights from a proposal narrower than the target
have heavy tails (k = 0.84 on eight schools with g = q); a wider, heavier-tailed g keeps them
bounded (Hesterberg 1995; Owen and Zhou 2000), and the weights are exact for any g. With
theta_s ~ g, the posterior weights of the globals' marginal are

    log w_s = log p(theta_s) + sum_n l_n(theta_s) - log g(theta_s)

(Magnusson et al. 2019 correct approximate draws so), and the leave-one-out ratios

    log r_sn = log w_s - l_n(theta_s)

(p(theta | x_-n) / g(theta) up to a constant). Pareto-smoothed (Vehtari et al. 2024, ArviZ's
``psislw``) and normalised to r~, they give

    elpd_loo,n = log sum_s r~_sn exp(l_n(theta_s)),

with k_n the Pareto shape of datum n's ratios: above min(1 - 1 / log10 S, 0.7) the estimate
of that datum is unreliable. ``posterior_k``, the shape of the w_s, says whether g covers the
globals' posterior at all. p_loo = lppd - elpd_loo with lppd_n = log sum_s w~_s
exp(l_n(theta_s)).

For models whose globals are the only latents outside the data plate this is exact as S, K
grow; the log of the K-draw average is biased low by about Var / (2 K) of the datum's weights,
which the factor, close to the datum's posterior, keeps small (the closed-form check on the
paper's linear model is ``tests/test_loo.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

from avi.analysis.per_datum import check_count, draw_groups, on_data, per_datum_log_joint
from avi.result import Fit
from avi.vi.elbo import global_distribution
from avi.vi.problem import Problem, VariationalParams


PROPOSAL_DOF = 4.0
"""Degrees of freedom of the globals' Student-t proposal (module docstring)."""
PROPOSAL_WIDTH = 2.0
"""Scale of the globals' proposal, in units of q(theta)'s sd."""


def _datum_marginals(
    problem: Problem, params: VariationalParams, theta: jax.Array, key: jax.Array, local_draws: int
) -> tuple[jax.Array, jax.Array]:
    """At one theta, the global term of the log joint (log p(theta) + log|J|) and the (N,)
    l_n(theta) ~= log 1/K sum_k p(x_n, z_k | theta) / q(z_k), z_k ~ q(z_n) the datum's own
    factor (module docstring)."""
    q_local = problem.family.factor.distribution(params.local)
    z = q_local.sample(key, (local_draws,))  # (K, N, D_l)
    global_term, per_datum = jax.vmap(
        lambda zz: per_datum_log_joint(
            problem.model, problem.layout, problem.args, problem.kwargs, theta, zz, params.model
        )
    )(z)
    weights = per_datum - q_local.log_prob(z)
    return global_term[0], logsumexp(weights, axis=0) - math.log(local_draws)


def _marginal_terms(
    key: jax.Array, params: VariationalParams, problem: Problem, num: int, local_draws: int
) -> tuple[jax.Array, jax.Array]:
    """For ``num`` draws theta_s ~ g (module docstring): (S,) log p(theta_s) + log|J| -
    log g(theta_s) (the global term of the log joint) and (S, N) l_n(theta_s)."""
    q = global_distribution(params)
    proposal = dist.Independent(
        dist.StudentT(PROPOSAL_DOF, q.base_dist.loc, PROPOSAL_WIDTH * q.base_dist.scale), 1
    )
    global_key, local_key = jax.random.split(key)
    thetas = proposal.sample(global_key, (num,))

    def one(theta: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        global_term, marginal = _datum_marginals(problem, params, theta, key, local_draws)
        return global_term - proposal.log_prob(theta), marginal

    return jax.lax.map(lambda a: one(*a), (thetas, jax.random.split(local_key, num)))


_terms = eqx.filter_jit(_marginal_terms)


def _marginals_at(
    key: jax.Array,
    params: VariationalParams,
    problem: Problem,
    thetas: jax.Array,
    local_draws: int,
) -> jax.Array:
    """(S, N) l_n(theta_s) at given globals (S, D_g)."""
    keys = jax.random.split(key, thetas.shape[0])
    return jax.lax.map(
        lambda a: _datum_marginals(problem, params, a[0], a[1], local_draws)[1], (thetas, keys)
    )


_marginals = eqx.filter_jit(_marginals_at)


def marginal_log_likelihood(
    fit: Fit, theta: np.ndarray, local_draws: int = 16, seed: int = 0
) -> np.ndarray:
    """Every datum's log likelihood with its local latents integrated out, l_n(theta) ~=
    log p(x_n | theta) (module docstring), at given draws of the globals: what
    :meth:`avi.Fit.to_arviz` puts in its ``log_likelihood`` group.

    Each estimate is the log of a K-draw importance-sampling average with the datum's own
    factor as proposal: unbiased inside the log, biased low by about Var / (2 K) of the
    normalised weights outside it.

    Args:
        fit: a fit in memory (its training data).
        theta: (S, D_g) unconstrained globals, in the layout's order.
        local_draws: draws K of each datum's factor per theta_s.
        seed: seed of the local draws.

    Returns:
        (S, N) float64 array (per group for grouped data).

    Raises:
        AviError: bad ``local_draws``; a fit without its training data.
    """
    check_count("local_draws", local_draws, 1)
    fit._check_in_memory("its training data (the log likelihood is of them)")
    on = on_data(fit, (), {})
    theta = jnp.asarray(theta, jnp.float32)
    parts, start = [], 0
    for key, size in draw_groups(seed, theta.shape[0], on.problem.layout, cost=local_draws):
        chunk = theta[start : start + size]
        parts.append(np.asarray(_marginals(key, on.params, on.problem, chunk, local_draws)))
        start += size
    return np.concatenate(parts).astype(np.float64)


def loo(fit: Fit, num_samples: int = 2000, local_draws: int = 16, seed: int = 0) -> Any:
    """PSIS-LOO of a fit on its training data, the latents of each datum integrated out and
    the draws of q corrected (module docstring).

    Args:
        fit: a fit in memory (its training data).
        num_samples: draws S of q(theta) (PSIS wants hundreds at least; >= 100).
        local_draws: draws K of each datum's factor per theta_s.
        seed: seed of the draws.

    Returns:
        An ``arviz.ELPDData`` as ``az.loo(..., pointwise=True)`` gives (``elpd_loo``, ``se``,
        ``p_loo``, ``loo_i``, ``pareto_k``, ``warning``, ...; ``az.compare`` takes it), with
        ``posterior_k``, the Pareto shape of the globals' posterior weights. Warns when a
        datum's k exceeds ArviZ's threshold (naming how many) or ``posterior_k`` exceeds 0.7.

    Raises:
        AviError: bad ``num_samples`` or ``local_draws``; a fit without its training data.
    """
    check_count("num_samples", num_samples, 100)
    check_count("local_draws", local_draws, 1)
    fit._check_in_memory("its training data (leave-one-out is over them)")
    on = on_data(fit, (), {})
    global_parts, marginals = [], []
    for key, size in draw_groups(seed, num_samples, on.problem.layout, cost=local_draws):
        g, m = _terms(key, on.params, on.problem, size, local_draws)
        global_parts.append(np.asarray(g, np.float64))
        marginals.append(np.asarray(m, np.float64))
    log_lik = np.concatenate(marginals)  # (S, N)
    log_w = np.concatenate(global_parts) + log_lik.sum(axis=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz as az
        from arviz.stats.stats_utils import ELPDData

    with warnings.catch_warnings():  # ArviZ warns on k > 0.7 itself: reported below instead
        warnings.simplefilter("ignore")
        posterior_lw, posterior_k = az.psislw(log_w[None, :] - log_w.max())
        ratios_lw, pareto_k = az.psislw((log_w[:, None] - log_lik).T)
    loo_i = np.asarray(_logsumexp(ratios_lw + log_lik.T))
    lppd_i = np.asarray(_logsumexp(posterior_lw + log_lik.T))
    count = loo_i.size
    good_k = min(1 - 1 / np.log10(num_samples), 0.7)
    bad = int(np.sum(pareto_k > good_k))
    if bad or posterior_k[0] > 0.7:
        warnings.warn(
            f"avi.loo: {bad} of {count} data have Pareto k above {good_k:.2f} (their leave-one-"
            f"out estimates are unreliable); the globals' posterior weights have k = "
            f"{float(posterior_k[0]):.2f} (above 0.7, the proposal from q(theta) is too far from "
            "the posterior for importance sampling to correct). More draws (num_samples), a richer family "
            "or a model that depends less on single data lower them.",
            UserWarning,
            stacklevel=2,
        )
    import xarray as xr

    return ELPDData(
        data=[
            float(loo_i.sum()),
            float(math.sqrt(count * np.var(loo_i))),
            float(lppd_i.sum() - loo_i.sum()),
            int(num_samples),
            int(count),
            bool(bad),
            xr.DataArray(loo_i, dims=[fit.traced.layout.plate], name="loo_i"),
            xr.DataArray(np.asarray(pareto_k), dims=[fit.traced.layout.plate]),
            "log",
            float(good_k),
            float(posterior_k[0]),
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
            "posterior_k",
        ],
    )


def _logsumexp(values: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis (float64)."""
    top = values.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=-1, keepdims=True)))[..., 0]
