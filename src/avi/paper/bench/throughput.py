"""New-data inference: posteriors per second of an amortized fit against re-fitting F-VI.

The amortized fit is the paper's linear model with an MLP encoder of width 16. For 10^6 new
data we time (a) the compiled encoder pass alone (features already standardized: the cost a
serving system pays per batch), (b) ``fit.local_factors(x_new)`` end to end (tracing the model
on the new data, building features, the pass), and (c) re-fitting F-VI to the new data with
default settings until the stop rule fires.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

import avi
from avi.paper.bench.timing import timed
from avi.paper.experiments import linear


def _encoder_pass(encoder: eqx.Module, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(encoder)(features)


encoder_pass = eqx.filter_jit(_encoder_pass)


def measure(num_new: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Posteriors per second (median over repeats) of the three ways to infer new data."""
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
    jax.block_until_ready(fit.local_factors(x_new))
    end_to_end = [
        timed(lambda: jax.block_until_ready(fit.local_factors(x_new)))[1] for _ in range(repeats)
    ]
    refit = avi.fit(linear.model, x_new, family="factorized", seed=seed, progress=False)
    return {
        "num_new": num_new,
        "encoder_pass_per_second": num_new / float(np.median(compiled)),
        "encoder_pass_seconds_min": float(np.min(compiled)),
        "encoder_pass_seconds_max": float(np.max(compiled)),
        "end_to_end_per_second": num_new / float(np.median(end_to_end)),
        "refit_fvi_per_second": num_new / refit.wall_time,
        "refit_fvi_seconds": refit.wall_time,
        "refit_fvi_steps": refit.num_steps,
    }
