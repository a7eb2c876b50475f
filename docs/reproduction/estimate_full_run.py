"""Estimate the duration of ``avi reproduce all`` at full size from short timed fits.

For every experiment at the paper's sizes and every family, one fit of ``--steps`` iterations
measures the compiled time per iteration (the first 20-iteration chunk, which compiles, is left
out), and 20 final-ELBO draws time the evaluation. The estimate is

    sum over families of  seeds * (num_steps * time per iteration + evaluation time),

plus one compilation per family. Usage (FashionMNIST's sizes need IDX files of its shapes;
random bytes time the same):

    python docs/reproduction/estimate_full_run.py [--data DIR] [--steps 200] [--seeds 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import avi
from avi.paper.experiments import registry
from avi.paper.experiments.common import fit_options


def _evaluation_time(fit: avi.Fit, num_particles: int, timed: int = 20) -> float:
    """Seconds for ``num_particles`` final-ELBO draws, from ``timed`` draws after a warm-up."""
    fit.elbo_draws(timed, seed=0)
    start = time.perf_counter()
    fit.elbo_draws(timed, seed=1)
    return (time.perf_counter() - start) * num_particles / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="FashionMNIST IDX directory")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    total = 0.0
    for name in registry.EXPERIMENTS:
        setup = registry.build(name, "full", args.data)
        experiment = 0.0
        for spec in setup.families:
            options = fit_options(setup, spec) | {"num_steps": args.steps}
            start = time.perf_counter()
            fit = avi.fit(setup.model, *setup.args, seed=0, **options)
            compile_and_fit = time.perf_counter() - start
            steps, times = fit.history.step, fit.history.wall_time
            per_step = float(np.diff(times[[0, -1]])[0] / np.diff(steps[[0, -1]])[0])
            evaluation = _evaluation_time(fit, setup.eval_particles)
            estimate = args.seeds * (setup.num_steps * per_step + evaluation) + compile_and_fit
            experiment += estimate
            print(
                f"{name:16s} {spec.label:40s} {1e3 * per_step:8.3f} ms/iteration x "
                f"{setup.num_steps:,} x {args.seeds} seeds -> {estimate / 3600:6.2f} h",
                flush=True,
            )
        total += experiment
        print(f"{name}: {experiment / 3600:.2f} h", flush=True)
    print(f"all: {total / 3600:.1f} h")


if __name__ == "__main__":
    main()
