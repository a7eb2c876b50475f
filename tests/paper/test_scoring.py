"""Scoring rules of one fit (avi.paper.reproduce.scoring): compile time, criteria, closing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from avi.analysis.compare import paired_gap
from avi.paper.reproduce.scoring import (
    compile_free_times,
    convergence,
    first_reach,
    fit_verdict,
    path_noise,
)


def test_compile_time_is_taken_out_of_the_path():
    np.testing.assert_allclose(compile_free_times(np.array([5.0, 6.0, 7.0])), [1.0, 2.0, 3.0])


def test_first_reach_and_never():
    steps, times = np.array([20, 40, 60]), np.array([1.0, 2.0, 3.0])
    assert first_reach(steps, times, np.array([-10.0, -1.0, 0.0]), -2.0) == (40.0, 2.0)
    assert first_reach(steps, times, np.array([-10.0, -9.0, -8.0]), -2.0) == (math.inf, math.inf)


def test_strict_criterion_is_floored_at_the_path_noise():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 401) * 20
    elbo = -1000.0 + 900.0 * np.exp(-steps / 1000.0) * -1 + 3.0 * rng.standard_normal(steps.size)
    path = pd.DataFrame({"step": steps, "wall_time": steps / 1000.0, "elbo": elbo})
    assert path_noise(elbo) == pytest.approx(3.0, rel=0.2)
    result = convergence(path, reference=-1000.0, strict_tolerance=0.1)
    assert result["strict_threshold"] == pytest.approx(6.0, rel=0.2)
    assert result["steps_1pct"] < result["steps_strict"] < math.inf


def test_a_fit_closes_only_within_monte_carlo_error_on_both_sides():
    assert fit_verdict(gap=0.19, stderr=0.1, elbo=-100.0) == "closed"
    assert fit_verdict(gap=0.21, stderr=0.1, elbo=-100.0) == "open"
    assert fit_verdict(gap=-0.19, stderr=0.1, elbo=-100.0) == "closed"
    # better than F-VI beyond noise: Prop. 2.1 says F-VI is not at its optimum
    assert fit_verdict(gap=-5.0, stderr=0.0, elbo=-100.0) == "reference not converged"
    # Identical fits differ by float32 rounding only.
    assert fit_verdict(gap=1e-6, stderr=0.0, elbo=-150.0) == "closed"
    assert fit_verdict(gap=1e-3, stderr=0.0, elbo=-150.0) == "open"
    gap, stderr = paired_gap(np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.5]))
    assert gap == pytest.approx(0.5) and stderr == 0.0
