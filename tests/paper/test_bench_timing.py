"""Time-to-target measurement of the benchmarks (avi.paper.bench.timing)."""

from __future__ import annotations

import avi
from avi.paper.bench.timing import Run, first_within, fit_to_target, summarize
from avi.paper.experiments import linear


def test_first_within_and_summaries_count_a_missed_target_as_infinite():
    checkpoints = [(100, 0.5, 3.0), (200, 1.0, 0.5), (300, 1.5, 0.1)]
    assert first_within(checkpoints, 1.0) == (1.0, 200)
    assert first_within(checkpoints, 0.0) == (None, None)
    runs = [Run(1.0, 200, 300, 1.5, 2.0), Run(None, None, 300, 1.5, 2.0), Run(3.0, 400, 500, 3, 2)]
    summary = summarize(runs)
    assert summary.median == 3.0 and summary.reached == 2 and summary.maximum is None
    assert summary.median_steps is None and summary.compile_seconds == 2.0


def test_fit_to_target_records_a_gap_per_checkpoint_and_stops_at_the_target():
    x = linear.simulate(50, seed=0)
    gaps_seen: list[int] = []

    def gap(params: object, problem: object) -> float:
        gaps_seen.append(len(gaps_seen))
        return 10.0 - len(gaps_seen)  # reaches the target 7.5 at the third checkpoint

    warm, fit, gaps = fit_to_target(
        linear.model,
        x,
        avi.Factorized(),
        gap,
        seed=0,
        warm_steps=20,
        max_steps=200,
        target=7.5,
        budget=60.0,
        chunk_size=20,
    )
    assert warm.num_steps == 20
    assert gaps == [9.0, 8.0, 7.0] and fit.num_steps == 60
