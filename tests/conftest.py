"""Shared fixtures: the paper's linear model at N = 10,000 and its closed-form optimum."""

from __future__ import annotations

import numpy as np
import pytest

from avi.paper.experiments import linear


@pytest.fixture(scope="session")
def linear_data() -> np.ndarray:
    return linear.simulate(linear.NUM_DATA, seed=0)


@pytest.fixture(scope="session")
def linear_optimum(linear_data: np.ndarray) -> linear.Optimum:
    return linear.factorized_optimum(linear_data)
