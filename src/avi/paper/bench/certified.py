"""The default fit as a user runs it: ``avi.fit(model, x)`` with its own stop rule and
certificate, warm (a first fit of the same shapes untimed), on the paper's linear model (Eq. 8).

Timed: the whole call (structure check, optimisation, every certificate asked), the run loop
(``fit.history.wall_time``: the steps and the certificates asked in it) and the rest. Checked against the closed form
outside the timed region: the exact gap to the F-VI optimum and q(theta)'s sd against the
optimum's. The competitor is NumPyro's fastest configuration of the linear part's grid, stopped
by an oracle the moment it is within the target (it has no stop rule of its own).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

import jax
import numpy as np

import avi
from avi.paper.bench.linear import exact_gap
from avi.paper.experiments import linear

FAMILIES = {
    "default (family='amortized', MLP(32))": "amortized",
    "Amortized(Polynomial(1))": avi.Amortized(avi.Polynomial(1)),
}
"""Families timed: the default, and the linear encoder that is exact for this model."""


def _one(x: np.ndarray, family: object, seed: int, optimum: linear.Optimum) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an uncertified fit warns; the row says so
        start = time.perf_counter()
        fit = avi.fit(linear.model, x, family=family, seed=seed, progress=False)
        jax.block_until_ready(fit.params)
        seconds = time.perf_counter() - start
    optimising = float(fit.history.wall_time[-1])
    theta_sd = float(np.exp(np.asarray(fit.params.global_log_scale)[0]))
    return {
        "seconds": seconds,
        "run_loop_seconds": optimising,
        "other_seconds": seconds - optimising,
        "steps": int(fit.num_steps),
        "converged": bool(fit.converged),
        "certificate_draws": int(fit.certificate.draws),
        "gap": float(exact_gap(x, optimum.elbo, fit.params, fit.problem)),
        "theta_sd_ratio": theta_sd / float(np.sqrt(np.ravel(optimum.theta.var)[0])),
    }


def measure(sizes: list[int], repeats: int) -> dict:
    """Per N and family: the first (compiling) call, then ``repeats`` seeds (one above 10^4);
    with the load average around the measurement."""
    load_before = os.getloadavg()
    rows = []
    for num_data in sizes:
        x = linear.simulate(num_data, seed=0)
        optimum = linear.factorized_optimum(x)
        for label, family in FAMILIES.items():
            first = _one(x, family, 100, optimum)
            seeds = range(repeats if num_data <= 10_000 else 1)
            runs = [_one(x, family, seed, optimum) for seed in seeds]
            seconds = [r["seconds"] for r in runs]
            rows.append(
                {
                    "num_data": num_data,
                    "family": label,
                    "first_call_seconds": first["seconds"],
                    "median": statistics.median(seconds),
                    "minimum": min(seconds),
                    "maximum": max(seconds),
                    "runs": runs,
                }
            )
    return {"rows": rows, "load_before": load_before, "load_after": os.getloadavg()}
