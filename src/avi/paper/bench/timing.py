"""Time-to-target measurement shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import avi
from avi.vi.elbo import Problem, VariationalParams

Gap = Callable[[VariationalParams, Problem], float]
"""The gap to the target of a checkpoint's variational parameters (computed untimed)."""


@dataclass(frozen=True)
class Run:
    """One timed optimisation: seconds to reach the target (None: never), steps, total time."""

    seconds_to_target: float | None
    steps_to_target: int | None
    steps: int
    seconds: float
    compile_seconds: float


@dataclass(frozen=True)
class Summary:
    """Median, min and max over repeats of the time to target; None where a repeat missed."""

    median: float | None
    minimum: float | None
    maximum: float | None
    reached: int
    repeats: int
    median_steps: float | None
    compile_seconds: float

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def summarize(runs: list[Run]) -> Summary:
    """Medians over repeats; a repeat that never reached the target counts as infinite."""
    times = [r.seconds_to_target for r in runs]
    reached = [t for t in times if t is not None]
    steps = [r.steps_to_target for r in runs if r.steps_to_target is not None]
    ordered = sorted(t if t is not None else float("inf") for t in times)
    median = statistics.median(ordered)
    return Summary(
        median=None if median == float("inf") else median,
        minimum=min(reached) if reached else None,
        maximum=None if len(reached) < len(times) else max(reached),
        reached=len(reached),
        repeats=len(runs),
        median_steps=statistics.median(steps) if len(steps) == len(runs) else None,
        compile_seconds=statistics.median(r.compile_seconds for r in runs),
    )


class Stopwatch:
    """Accumulates optimisation time, excluding the evaluation work done between chunks."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._start = time.perf_counter()

    def pause(self) -> None:
        self.elapsed += time.perf_counter() - self._start

    def resume(self) -> None:
        self._start = time.perf_counter()


def fit_to_target(
    model: Callable[..., None],
    x: Any,
    family: Any,
    gap: Gap,
    *,
    seed: int,
    warm_steps: int,
    max_steps: int,
    target: float,
    budget: float,
    **options: Any,
) -> tuple[avi.Fit, avi.Fit, list[float]]:
    """(warm fit, timed fit, gap at each checkpoint) of one ``avi.fit`` run to a target.

    The warm fit (``warm_steps`` steps, same options) builds the compiled program; it stops
    short of convergence by design, so its ConvergenceWarning is silenced. The timed fit records ``gap`` at every checkpoint with its stopwatch paused, and stops at the first
    checkpoint within ``target`` or once its optimisation time exceeds ``budget`` seconds.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", avi.ConvergenceWarning)
        warm = avi.fit(
            model, x, family=family, seed=seed, max_steps=warm_steps, progress=False, **options
        )
    gaps: list[float] = []
    watch = Stopwatch()

    def callback(step: int, params: VariationalParams, problem: Problem) -> bool:
        watch.pause()
        gaps.append(float(gap(params, problem)))
        watch.resume()
        return gaps[-1] <= target or watch.elapsed > budget

    fit = avi.fit(
        model,
        x,
        family=family,
        seed=seed,
        max_steps=max_steps,
        progress=False,
        callback=callback,
        **options,
    )
    return warm, fit, gaps


def first_within(
    gaps: list[tuple[int, float, float]], target: float
) -> tuple[float | None, int | None]:
    """(seconds, step) of the first checkpoint (step, seconds, gap) whose gap <= target."""
    for step, seconds, gap in gaps:
        if gap <= target:
            return seconds, step
    return None, None


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """Run ``function`` and return its result with the wall time it took."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start
