"""Linear model (paper Eq. 8): wall time until the ELBO is within 1e-4 nats per datum of the
closed-form optimum, for avi's families and for NumPyro's SVI on the same data in the same run.

The gap of a checkpoint is computed exactly from its variational parameters
(:func:`avi.paper.experiments.linear.elbo`), outside the timed region, so the criterion carries no
Monte Carlo error. Methods:

* avi with default settings: Amortized(Polynomial(1)), the default "amortized" family
  (MLP width 32), Factorized;
* the paper's recipe in JAX (full batch, 100 draws, Adam 1e-2 for A-VI and 1e-3 for F-VI,
  analytic-entropy estimator, constant step size), run through avi's engine;
* NumPyro's SVI with AutoNormal (1 and 100 particles) and a hand-written amortized guide
  (linear mean, shared scale, 1 particle), Adam, steps compiled in chunks with lax.scan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import avi
from avi.paper.bench.timing import Run, Stopwatch, first_within, fit_to_target
from avi.paper.experiments import linear
from avi.vi.elbo import Problem, VariationalParams

CHUNK = 100
GAP_PER_DATUM = 1e-4


@dataclass(frozen=True)
class Method:
    """A named way of fitting the linear model; ``run(x, target, max_steps, budget, seed)``."""

    name: str
    run: Callable[[np.ndarray, float, int, float, int], Run]


def _exact_gap(x: np.ndarray, optimum: float, theta_mean, theta_sd, z_mean, z_sd) -> float:
    theta = linear.Gaussian(
        np.asarray(theta_mean, np.float64), np.asarray(theta_sd, np.float64) ** 2
    )
    z = linear.Gaussian(np.asarray(z_mean, np.float64), np.asarray(z_sd, np.float64) ** 2)
    return optimum - linear.elbo(x, theta, z)


def exact_gap(x: np.ndarray, optimum: float, params: VariationalParams, problem: Problem) -> float:
    """The closed-form optimum's ELBO minus the exact ELBO of avi's fitted parameters."""
    lam = problem.family.local_params(params.local, problem.local_data, None)
    loc, log_scale = lam["loc"], lam["log_scale"]
    theta_sd = jnp.exp(params.global_log_scale[0])
    z_sd = jnp.exp(log_scale[:, 0])
    return _exact_gap(x, optimum, params.global_loc[0], theta_sd, loc[:, 0], z_sd)


def avi_method(name: str, family: avi.Amortized | avi.Factorized, **options) -> Method:
    """avi.fit with the given family and options, stopped once within the target or over budget.

    Seconds come from ``fit.history.wall_time`` (optimisation only; the exact-gap evaluation
    in the callback is excluded by avi itself).
    """

    def run(x: np.ndarray, target: float, max_steps: int, budget: float, seed: int) -> Run:
        optimum = linear.factorized_optimum(x).elbo

        def gap(params: VariationalParams, problem: Problem) -> float:
            return exact_gap(x, optimum, params, problem)

        warm, fit, gaps = fit_to_target(
            linear.model,
            x,
            family,
            gap,
            seed=seed,
            warm_steps=CHUNK,
            max_steps=max_steps,
            target=target,
            budget=budget,
            **options,
        )
        checkpoints = list(zip(fit.history.step, fit.history.wall_time, gaps, strict=False))
        seconds, steps = first_within(checkpoints, target)
        return Run(seconds, steps, fit.num_steps, fit.wall_time, warm.wall_time)

    return Method(name, run)


def amortized_guide(x: jnp.ndarray, tau: float = linear.TAU, sigma: float = linear.SIGMA) -> None:
    """Hand-written NumPyro amortized guide: q(z_n) = N(a + b x_n, s^2), q(theta) Gaussian."""
    theta_loc = numpyro.param("theta_loc", 0.0)
    theta_scale = numpyro.param("theta_scale", 0.1, constraint=dist.constraints.positive)
    numpyro.sample("theta", dist.Normal(theta_loc, theta_scale))
    a = numpyro.param("a", 0.0)
    b = numpyro.param("b", 0.0)
    log_s = numpyro.param("log_s", math.log(0.1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(a + b * x, jnp.exp(log_s)))


def _numpyro_moments(guide_name: str, params: dict, x: np.ndarray):
    if guide_name == "autonormal":
        return (
            params["theta_auto_loc"],
            params["theta_auto_scale"],
            params["z_auto_loc"],
            params["z_auto_scale"],
        )
    z_mean = params["a"] + params["b"] * x
    return (
        params["theta_loc"],
        params["theta_scale"],
        z_mean,
        jnp.exp(params["log_s"]) * jnp.ones_like(x),
    )


def numpyro_method(name: str, guide_name: str, num_particles: int, learning_rate: float) -> Method:
    """NumPyro SVI, steps compiled in chunks of CHUNK with lax.scan over ``svi.update``."""

    def run(x: np.ndarray, target: float, max_steps: int, budget: float, seed: int) -> Run:
        optimum = linear.factorized_optimum(x).elbo
        guide = AutoNormal(linear.model) if guide_name == "autonormal" else amortized_guide
        svi = SVI(linear.model, guide, optax.adam(learning_rate), Trace_ELBO(num_particles))
        data = jnp.asarray(x)

        @jax.jit
        def chunk(state, data):
            return jax.lax.scan(lambda s, _: svi.update(s, data), state, None, length=CHUNK)

        state = svi.init(jax.random.PRNGKey(seed), data)
        watch = Stopwatch()
        jax.block_until_ready(chunk(state, data))
        watch.pause()
        compile_seconds = watch.elapsed
        watch = Stopwatch()
        checkpoints: list[tuple[int, float, float]] = []
        steps = 0
        while steps < max_steps and watch.elapsed <= budget:
            watch.resume()
            state, _ = chunk(state, data)
            jax.block_until_ready(state)
            watch.pause()
            steps += CHUNK
            moments = _numpyro_moments(guide_name, svi.get_params(state), x)
            checkpoints.append((steps, watch.elapsed, _exact_gap(x, optimum, *moments)))
            if checkpoints[-1][2] <= target:
                break
        seconds, steps_to_target = first_within(checkpoints, target)
        return Run(seconds, steps_to_target, steps, watch.elapsed, compile_seconds)

    return Method(name, run)


def methods(quick: bool, many_draws: bool = True) -> list[Method]:
    """The methods compared; the NumPyro learning rates are a grid in a full run.

    ``many_draws=False`` leaves out the 100-draw configurations (for very large N).
    """
    paper_avi, paper_fvi = optax.adam(1e-2), optax.adam(1e-3)
    paper = {"num_particles": 100, "sticking_the_landing": False, "batch_size": None}
    chosen = [
        avi_method("avi amortized Polynomial(1), defaults", avi.Amortized(avi.Polynomial(1))),
        avi_method("avi amortized MLP(32) (family='amortized'), defaults", avi.Amortized()),
        avi_method("avi factorized, defaults", avi.Factorized()),
    ]
    if many_draws:
        chosen += [
            avi_method(
                "paper recipe A-VI: Polynomial(1), 100 draws, Adam 1e-2",
                avi.Amortized(avi.Polynomial(1)),
                optimizer=paper_avi,
                **paper,
            ),
            avi_method(
                "paper recipe F-VI: 100 draws, Adam 1e-3",
                avi.Factorized(),
                optimizer=paper_fvi,
                **paper,
            ),
        ]
    rates = (1e-2,) if quick else (1e-3, 1e-2, 3e-2, 1e-1)
    for rate in rates:
        chosen += [
            numpyro_method(f"NumPyro AutoNormal, 1 particle, Adam {rate:g}", "autonormal", 1, rate),
            numpyro_method(
                f"NumPyro hand-written amortized guide, 1 particle, Adam {rate:g}",
                "amortized",
                1,
                rate,
            ),
        ]
        if many_draws:
            chosen.append(
                numpyro_method(
                    f"NumPyro AutoNormal, 100 particles, Adam {rate:g}", "autonormal", 100, rate
                )
            )
    return chosen
