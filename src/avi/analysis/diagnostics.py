"""Diagnostics of an amortized fit: the F-VI gradient at its factors (paper, section 5), the
generalization gap to held-out data, and PSIS's k-hat of the importance weights.

Each works through the per-datum factors a fit assigns to the data
(:func:`avi.analysis.per_datum.on_data`), so it applies to any family that can infer them
(amortized or constant) and, on the training data, to F-VI too.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.analysis.per_datum import check_count, draw_groups, on_data, per_datum_elbo_draws
from avi.errors import FamilyError
from avi.result import Estimate, Fit
from avi.vi.elbo import elbo_draws
from avi.vi.problem import Problem, VariationalParams

ROUNDING = 1e-5
"""Log weights that vary by less than this fraction of their size are constant up to float32
rounding (PSIS's tail fit would return inf on such noise)."""


class GradientNorm(NamedTuple):
    """Norm of a Monte Carlo gradient estimate, with the norm its noise alone would have.

    Attributes:
        norm: ||g-hat||, g-hat the mean of the per-draw gradients.
        noise: sqrt(sum_i Var(g-hat_i)), estimated from the per-draw gradients: the expected
            norm of g-hat if the true gradient were zero. A norm within a few ``noise`` of
            zero is zero within Monte Carlo error.
    """

    norm: float
    noise: float


def _gradient_moments(
    key: jax.Array, params: VariationalParams, problem: Problem, num: int
) -> tuple[jax.Array, jax.Array]:
    """Mean and centred sum of squares of ``num`` per-draw gradients w.r.t. the local factors."""

    def one(draw_key: jax.Array) -> jax.Array:
        def elbo(local: Any) -> jax.Array:
            return elbo_draws(draw_key, params._replace(local=local), problem, None, 1, True)[0]

        grads = jax.grad(elbo)(params.local)
        return jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads)])

    per_draw = jax.vmap(one)(jax.random.split(key, num))
    mean = jnp.mean(per_draw, axis=0)
    return mean, jnp.sum((per_draw - mean) ** 2, axis=0)


_moments = eqx.filter_jit(_gradient_moments)


def factor_gradient_norm(
    fit: Fit, *args: Any, num_particles: int = 1000, seed: int = 0, **kwargs: Any
) -> GradientNorm:
    """Norm of the F-VI gradient at the fit's factors: the paper's section 5 diagnostic.

    g = d ELBO / d(mu_n, log sigma_n)_{n=1..N}, the gradient of the full-data ELBO with respect
    to free per-datum factors, evaluated where the fit puts them (the encoder's output) and at
    the fit's q(theta). At F-VI's optimum g = 0, so g vanishes at an amortized fit whose
    encoder reaches that optimum (an ideal inference function, Theorem 3.4); a g far from zero
    says F-VI steps from the fit would raise the ELBO (:func:`refine`). Estimated with
    sticking-the-landing draws (Roeder et al. 2017): unbiased, and without the noise of the
    entropy's score, so that ``noise`` is small near a good fit.

    Args:
        fit: a fit (on the training data any family; on new data one that infers them).
        *args: new data; none for the training data.
        num_particles: Monte Carlo draws.
        seed: seed of the draws.
        **kwargs: the model's keyword arguments for the new data.

    Returns:
        The :class:`GradientNorm`.
    """
    check_count("num_particles", num_particles, 2)
    on = on_data(fit, args, kwargs)
    count, mean, squares = 0, None, None
    for key, size in draw_groups(seed, num_particles, on.problem.layout, cost=8):
        group_mean, group_squares = (
            np.asarray(a, np.float64) for a in _moments(key, on.params, on.problem, size)
        )
        if mean is None:
            count, mean, squares = size, group_mean, group_squares
            continue
        total = count + size
        delta = group_mean - mean
        squares = squares + group_squares + delta**2 * count * size / total  # Chan et al. 1979
        mean = mean + delta * size / total
        count = total
    variance = squares / (count - 1)
    return GradientNorm(float(np.linalg.norm(mean)), float(np.sqrt(np.sum(variance) / count)))


# ------------------------------------------------------------------------- generalization


class GeneralizationGap(NamedTuple):
    """Per-datum ELBO on held-out against training data (:func:`generalization_gap`).

    Attributes:
        train: mean of l_n over the training data.
        heldout: mean of l_n over the held-out data.
        difference: heldout - train; negative when the encoder serves new data worse.
    """

    train: Estimate
    heldout: Estimate
    difference: Estimate


def _mean_contribution(draws: np.ndarray) -> Estimate:
    """Mean over data of the per-datum estimates, stderr = sd over data / sqrt(N)."""
    per_datum = draws.mean(axis=0)
    return Estimate(
        float(per_datum.mean()), float(per_datum.std(ddof=1) / math.sqrt(per_datum.size))
    )


def generalization_gap(
    fit: Fit, *heldout_args: Any, num_particles: int = 100, seed: int = 0, **heldout_kwargs: Any
) -> GeneralizationGap:
    """How much worse the encoder serves held-out data than its training data.

    For a data set D of size N_D, with the fit's q(theta) and the factors its encoder gives D's
    data, the per-datum ELBO is (1/N_D) sum_{n in D} l_n, l_n the ELBO contribution of datum n
    (module docstring): the ELBO of the model on D minus the global part E_q[log p(theta)] +
    H[q(theta)], divided by N_D. Subtracting the global part, which a data set carries once
    whatever its size, makes data sets of different sizes comparable. Both data sets use the
    same q(theta), fitted to the training data (the setting of the paper's deep generative
    experiment: test reconstruction against training). Each mean's standard error is the sd of
    the estimated l_n over the data over sqrt(N_D): it counts the variation between data (held-
    out data are a sample) as well as Monte Carlo error.

    Args:
        fit: an amortized or constant fit.
        *heldout_args: the held-out data, as the model's positional arguments.
        num_particles: Monte Carlo draws per data set.
        seed: seed of the draws.
        **heldout_kwargs: the model's keyword arguments for the held-out data (all of them;
            the training data's are not reused).

    Returns:
        The :class:`GeneralizationGap`; ``difference`` near 0 within its stderr means the
        encoder generalizes.

    Raises:
        FamilyError: the fit cannot infer new data (Factorized), or no held-out data given.
    """
    if not fit.family.infers_new_data:
        raise FamilyError(
            "generalization_gap(fit) needs an amortized or constant fit: a Factorized fit has "
            "no factors for held-out data."
        )
    if not (heldout_args or heldout_kwargs):
        raise FamilyError("generalization_gap(fit, *heldout_args): give the held-out data.")
    train = _mean_contribution(per_datum_elbo_draws(fit, num_particles=num_particles, seed=seed))
    heldout = _mean_contribution(
        per_datum_elbo_draws(
            fit, *heldout_args, num_particles=num_particles, seed=seed, **heldout_kwargs
        )
    )
    difference = Estimate(heldout.mean - train.mean, math.hypot(heldout.stderr, train.stderr))
    return GeneralizationGap(train, heldout, difference)


# ------------------------------------------------------------------------------------ PSIS


def _log_weights(
    key: jax.Array, params: VariationalParams, problem: Problem, num: int
) -> jax.Array:
    """log p(x, theta, z) + log|J| - log q(theta, z) for ``num`` draws from q."""
    return elbo_draws(key, params, problem, None, num, stop_gradient_entropy_params=True)


_log_weight_draws = eqx.filter_jit(_log_weights)


def psis_khat(fit: Fit, num_samples: int = 1000, seed: int = 0) -> float:
    """Pareto k-hat of the importance weights p(x, theta, z) / q(theta, z) (Yao et al. 2018).

    With draws (theta, z) ~ q on the full data, log w = log p(x, theta, z) - log q(theta, z)
    (in unconstrained space, Jacobians included); ArviZ's ``psislw`` fits a generalized Pareto
    distribution to the largest weights and returns its shape k. Yao et al.'s reading:
    k < 0.5, q is close to the posterior and importance sampling corrects it well; 0.5 to 0.7,
    usable with care; k > 0.7, q misses mass of the posterior (too narrow or misplaced)
    and estimates from it are unreliable. For a Gaussian target N(0, s_p^2) and proposal
    N(0, s_q^2) with s_q < s_p the exact tail shape is k = 1 - s_q^2 / s_p^2.

    Note: q here is the joint over theta and all N local latents, and log w sums N per-datum
    terms, so small mismatches of the factors add up with N: with many data k-hat easily
    exceeds 0.7 (an encoder of x_n alone on the saw model, N = 500: k-hat 5.5; F-VI: 0.58),
    and it flags whole-q problems that the marginals hide. Where the posterior dependence
    between theta and the z_n is weak it stays moderate (the linear model: 0.4-0.55 for F-VI
    and for degree 1 from N = 20 to 2,000). Compare fits of one model with it rather than
    reading it against the thresholds alone.

    Args:
        fit: a fit (its training data).
        num_samples: draws from q (ArviZ needs enough for the tail: >= 100; 1000 or more).
        seed: seed of the draws.

    Returns:
        k-hat; -inf when the log weights are equal up to float32 rounding (q is the posterior:
        the weights are bounded, the limit k -> -inf of the generalized Pareto family).

    Raises:
        AviError: ``num_samples`` is not an integer >= 100.
    """
    check_count("num_samples", num_samples, 100)
    on = on_data(fit, (), {})
    log_w = np.concatenate(
        [
            np.asarray(_log_weight_draws(key, on.params, on.problem, size), np.float64)
            for key, size in draw_groups(seed, num_samples, on.problem.layout)
        ]
    )
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its coming refactor with a FutureWarning on import; importing it
        # here keeps its cost (xarray, ...) out of ``import avi``.
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz as az

    if np.ptp(log_w) <= ROUNDING * max(1.0, float(np.max(np.abs(log_w)))):
        return -math.inf  # constant weights: q is the posterior up to float32 rounding
    _, khat = az.psislw(log_w)
    return float(khat)
