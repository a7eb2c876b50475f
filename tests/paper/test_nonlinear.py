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
from avi.paper.experiments.common import REFERENCE_LABEL
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
def test_nonlinear_gap_against_a_reference_that_no_encoder_beats(
    quick_summary: Callable[[str], pd.DataFrame],
    verdicts: Callable[[pd.DataFrame, list[str]], list[str]],
):
    """F-VI at the quick budget sits below the wide encoders (Prop. 2.1 forbids that at its
    optimum), so it is refined from the best of them; against that reference no encoder wins,
    the narrow ones stay open, wider than every wide one, which are a few nats open: the
    paper's "closes from width 4" does not hold at this size. Measured (seeds 0-1, encoders at
    equinox's default law drawn by NumPy): constant 278 nats, widths 1 and 2 122 and 9.7,
    widths 4-32 2.4-4.6; with the same law drawn by JAX width 2 stayed hundreds of nats open
    and widths 4-32 1.7-5.9: which local optimum a width-2 MLP reaches depends on its start."""
    summary = quick_summary("nonlinear")
    narrow = ["constant", "A-VI MLP k=1", "A-VI MLP k=2"]
    wide = [f"A-VI MLP k={k}" for k in (4, 8, 16, 32)]
    assert summary.loc[REFERENCE_LABEL, "reference_lift"] > 0
    assert verdicts(summary, narrow) == ["open"] * 3
    assert set(verdicts(summary, wide)) <= {"open", "closed", "seeds disagree"}
    assert summary.loc[wide, "gap"].max() < summary.loc[narrow, "gap"].min()
