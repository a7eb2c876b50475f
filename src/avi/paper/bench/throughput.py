"""New-data inference: posteriors per second of an amortized fit against re-fitting F-VI.

The amortized fit is the paper's linear model with an MLP encoder of width 16. For 10^6 new
data we time (a) the compiled encoder pass alone, one vmap over all data (features already
standardized: the cost a serving system pays per batch), (b) ``fit.posterior(x_new)`` end to
end (features from the arguments, the chunked encoder pass, the NumPyro distributions) and
``fit.local_factors(x_new)`` (the same without the distributions), each after a first call with
those shapes (whose seconds, compilation included, are reported), and optionally (c) re-fitting
F-VI to the new data with default settings until the stop rule fires.
"""

from __future__ import annotations

import os
import statistics

import equinox as eqx
import jax

import avi
from avi.paper.bench.timing import timed
from avi.paper.experiments import linear


def _encoder_pass(encoder: eqx.Module, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(encoder)(features)


encoder_pass = eqx.filter_jit(_encoder_pass)


def _rates(num_new: int, seconds: list[float]) -> dict[str, float]:
    """Posteriors per second at the median, fastest and slowest repeat."""
    return {
        "per_second": num_new / statistics.median(seconds),
        "seconds_median": statistics.median(seconds),
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
    }


def measure(num_new: int, repeats: int, refit: bool, seed: int = 0) -> dict:
    """Posteriors per second (median over repeats, with the extremes) of the ways to infer
    new data, with the load average (1, 5, 15 min) before and after."""
    load_before = os.getloadavg()
    x = linear.simulate(10_000, seed=seed)
    fit = avi.fit(
        linear.model, x, family=avi.Amortized(avi.MLP(width=16)), seed=seed, progress=False
    )
    x_new = linear.simulate(num_new, seed=seed + 1)
    features = jax.numpy.asarray(fit.scaling.apply(x_new[:, None]))
    encoder = fit.params.local["encoder"]
    jax.block_until_ready(encoder_pass(encoder, features))
    compiled = [
        timed(lambda: jax.block_until_ready(encoder_pass(encoder, features)))[1]
        for _ in range(repeats)
    ]

    def posterior() -> None:
        jax.block_until_ready(jax.tree.leaves(fit.posterior(x_new)))

    def local_factors() -> None:
        jax.block_until_ready(fit.local_factors(x_new))

    first = timed(posterior)[1]
    end_to_end = [timed(posterior)[1] for _ in range(repeats)]
    factors = [timed(local_factors)[1] for _ in range(repeats)]
    result = {
        "num_new": num_new,
        "repeats": repeats,
        "encoder_pass": _rates(num_new, compiled),
        "posterior": _rates(num_new, end_to_end),
        "posterior_first_call_seconds": first,
        "local_factors": _rates(num_new, factors),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    if refit:
        again = avi.fit(linear.model, x_new, family="factorized", seed=seed, progress=False)
        result["refit_fvi"] = {
            "per_second": num_new / again.wall_time,
            "seconds": again.wall_time,
            "steps": again.num_steps,
        }
    return result
