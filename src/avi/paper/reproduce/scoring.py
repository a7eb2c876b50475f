"""Scoring rules of one fit: its gap to F-VI, its verdict, and when its path converges.

The paired gap itself (mean and standard error of the per-draw differences) is
:func:`avi.analysis.compare.paired_gap`; this module decides what a gap and a path mean.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from avi.analysis.compare import verdict
from avi.result import Estimate

EVAL_SEED = 10_000
"""Seed s evaluates every family's final ELBO with the draws of seed EVAL_SEED + s."""
PAPER_FRACTION = 0.01
"""The paper's convergence criterion: loss within 1% of F-VI's converged loss."""
STRICT_NATS_PER_DATUM = 1e-4
"""The strict criterion: ELBO within 1e-4 nats per datum of F-VI's converged ELBO."""


def compile_free_times(times: np.ndarray) -> np.ndarray:
    """Checkpoint wall times without compilation: the first chunk's excess over the second's."""
    if times.size < 2:
        return times
    overhead = max(0.0, float(times[0] - (times[1] - times[0])))
    return times - overhead


def path_noise(elbo: np.ndarray) -> float:
    """Standard deviation of a path's points about their trend over its last quarter.

    Differences of consecutive points remove a slow trend; their sd over sqrt(2) is the sd of
    one point. Zero for paths too short to tell.
    """
    tail = np.asarray(elbo)[len(elbo) * 3 // 4 :]
    if tail.size < 3:
        return 0.0
    return float(np.std(np.diff(tail), ddof=1) / math.sqrt(2))


def first_reach(
    steps: np.ndarray, times: np.ndarray, elbo: np.ndarray, target: float
) -> tuple[float, float]:
    """(iteration, wall time) of the first path point with ELBO >= target; (inf, inf) if none."""
    reached = np.flatnonzero(np.asarray(elbo) >= target)
    if reached.size == 0:
        return math.inf, math.inf
    return float(steps[reached[0]]), float(times[reached[0]])


def convergence(path: pd.DataFrame, reference: float, strict_tolerance: float) -> dict[str, float]:
    """Iterations and seconds to the 1% and strict criteria for one fit's path.

    Args:
        path: the fit's ELBO path, columns step, wall_time and elbo.
        reference: E*, F-VI's converged ELBO.
        strict_tolerance: the strict criterion's distance to E* (1e-4 nats per datum); the
            path's noise floor (twice :func:`path_noise`) replaces it when larger.
    """
    steps, times, elbo = (path[c].to_numpy() for c in ("step", "wall_time", "elbo"))
    threshold = max(strict_tolerance, 2.0 * path_noise(elbo))
    steps_1pct, time_1pct = first_reach(
        steps, times, elbo, reference - PAPER_FRACTION * abs(reference)
    )
    steps_strict, time_strict = first_reach(steps, times, elbo, reference - threshold)
    return {
        "steps_1pct": steps_1pct,
        "time_1pct": time_1pct,
        "steps_strict": steps_strict,
        "time_strict": time_strict,
        "strict_threshold": threshold,
    }


def fit_verdict(gap: float, stderr: float, elbo: float, tolerance: float = 0.0) -> str:
    """One fit's two-sided verdict (:func:`avi.analysis.compare.verdict`: "closed", "open" or
    "reference not converged"), the stderr floored at the ELBO's float32 resolution and
    ``tolerance`` nats of optimisation error forgiven (the reproductions forgive the strict
    criterion's 1e-4 nats per datum: fits stopped at a fixed budget are not at their optima to
    Monte Carlo precision, and common random numbers make the Monte Carlo error tiny)."""
    resolution = float(np.finfo(np.float32).eps) * abs(elbo)
    return verdict(Estimate(gap, max(stderr, resolution)), tolerance)
