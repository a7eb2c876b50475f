"""The nonlinear experiment (avi.paper.experiments.nonlinear): its density and its claims.

Tolerance: numpyro's log density is float32, 1e-4 relative on sums of ~100 terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import log_density

from avi.paper.experiments import nonlinear
from avi.paper.reproduce import summarize


def test_nonlinear_density_keeps_the_log_scale_term():
    x = nonlinear.simulate(50, seed=3)
    theta, z = 0.3, np.linspace(-2, 2, 50, dtype=np.float32)
    value, _ = log_density(
        nonlinear.model, (jnp.asarray(x),), {}, {"theta": theta, "z": jnp.asarray(z)}
    )
    scale = np.exp(np.cos(z))
    loc = theta + z * (1 + np.sin(z))
    expected = (
        -0.5 * theta**2
        - 0.5 * np.sum(z**2)
        - np.sum(0.5 * ((x - loc) / scale) ** 2 + np.log(scale))
        - 0.5 * (2 * x.size + 1) * math.log(2 * math.pi)
    )
    assert float(value) == pytest.approx(expected, rel=1e-4)


def test_claims_cannot_tell_from_one_seed(
    fake_fits: Callable[[dict[str, list[float]]], pd.DataFrame],
):
    families = nonlinear.setup("tiny").families
    fits = fake_fits({spec.label: [0.0] for spec in families})
    summary = summarize(families, fits)
    sensitivity = nonlinear.check_claims(summary, fits)[1]
    assert sensitivity.agrees is None and "2 seeds" in sensitivity.measured


@pytest.mark.slow
def test_nonlinear_gap_closes_from_width_four(
    quick_summary: Callable[[str], pd.DataFrame],
    verdicts: Callable[[pd.DataFrame, list[str]], list[str]],
):
    summary = quick_summary("nonlinear")
    narrow = ["constant", "A-VI MLP k=1", "A-VI MLP k=2"]
    wide = [f"A-VI MLP k={k}" for k in (4, 8, 16, 32)]
    assert verdicts(summary, narrow) == ["open"] * 3
    assert verdicts(summary, wide) == ["closed"] * 4
