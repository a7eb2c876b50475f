"""The linear experiment (avi.paper.experiments.linear) against its closed forms.

The default tests run the experiment in this process at the tiny size (N = 200; F-VI and
Polynomial(1), 300 iterations, two seeds) and check its numbers against the closed-form F-VI
optimum (Prop. 3.6), and a tiny-data run long enough for F-VI to reach its optimum against the
closed-form optimum and the closed-form gap of the constant family. The slow test runs the
quick size and checks the paper's finding.

Tolerances: a Monte Carlo estimate is compared with a closed form within 4 of its standard
errors (a 4-sigma band: one false alarm in ~16,000 checks); a fitted q can never beat the
closed-form optimum, up to float32 round-off of its parameters (1e-6 nats here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from avi.paper.experiments import linear
from avi.paper.experiments.common import REFERENCE_LABEL
from avi.paper.reproduce import run_experiment

DEGREE_ONE = "A-VI polynomial degree 1"
CONVERGED_STEPS = 8_000
"""Enough Adam steps at the paper's rates (1e-3 for F-VI) for F-VI at N = 200 to reach its
optimum: measured 1e-3 nats short of it, against a Monte Carlo standard error of 0.3."""
OPTIMISATION_RESIDUAL = 0.05
"""Nats (2.5e-4 per datum) Polynomial(1) may stay short of F-VI after the same steps: its
fits' exact gaps measured 0.002 and 0.021 on seeds 0 and 1."""


@pytest.fixture(scope="module")
def tiny_fits(tiny_run: Callable[[str], Path]) -> pd.DataFrame:
    """fits.csv of the in-process ``avi reproduce linear --size tiny``."""
    return pd.read_csv(tiny_run("linear") / "linear" / "fits.csv").set_index(["family", "seed"])


def test_no_fit_beats_a_closed_form_bound(tiny_fits: pd.DataFrame):
    x = linear.setup("tiny").args[0]
    assert (tiny_fits["exact_elbo"] <= linear.factorized_optimum(x).elbo + 1e-6).all()
    # The Monte Carlo estimate agrees with the closed form within 4 standard errors.
    mismatch = abs(tiny_fits["elbo"] - tiny_fits["exact_elbo"])
    assert (mismatch < 4 * tiny_fits["elbo_se"]).all()


def test_tiny_run_gaps_are_the_exact_gaps_within_monte_carlo_error(tiny_fits: pd.DataFrame):
    amortized = tiny_fits.loc[DEGREE_ONE]
    assert (abs(amortized["gap"] - amortized["exact_gap"]) < 4 * amortized["gap_se"]).all()
    reference = tiny_fits.loc[REFERENCE_LABEL]
    assert (reference["gap"] == 0).all() and (reference["exact_gap"] == 0).all()


def test_ideal_encoder_reaches_the_closed_form_optimum_at_tiny_size(tiny_fits: pd.DataFrame):
    # Polynomial(1) holds the ideal inference function (Prop. 3.6), and its few parameters
    # converge within the 300 iterations of the tiny size (F-VI's 200 factors do not).
    optimum = linear.factorized_optimum(linear.setup("tiny").args[0]).elbo
    amortized = tiny_fits.loc[DEGREE_ONE]
    assert (abs(amortized["elbo"] - optimum) < 4 * amortized["elbo_se"]).all()


@pytest.fixture(scope="module")
def converged() -> pd.DataFrame:
    """F-VI, the constant family and Polynomial(1) on the tiny data, run to F-VI's optimum."""
    tiny = linear.setup("tiny")
    labels = (REFERENCE_LABEL, "constant", DEGREE_ONE)
    families = tuple(spec for spec in linear.families() if spec.label in labels)
    setup = dataclasses.replace(tiny, families=families, num_steps=CONVERGED_STEPS)
    return run_experiment(setup, "tiny", [0]).fits.set_index("family")


def test_factorized_fit_reaches_the_closed_form_optimum(converged: pd.DataFrame):
    optimum = linear.factorized_optimum(linear.setup("tiny").args[0]).elbo
    fit = converged.loc[REFERENCE_LABEL]
    assert abs(fit["elbo"] - optimum) < 4 * fit["elbo_se"]
    assert optimum - OPTIMISATION_RESIDUAL <= fit["exact_elbo"] <= optimum + 1e-6


def test_constant_gap_is_the_closed_form_gap_and_the_ideal_encoder_has_none(
    converged: pd.DataFrame,
):
    x = linear.setup("tiny").args[0]
    constant, amortized = converged.loc["constant"], converged.loc[DEGREE_ONE]
    assert constant["gap"] > 4 * constant["gap_se"]  # positive: the constant family is short
    assert abs(constant["gap"] - linear.constant_gap(x)) < 4 * constant["gap_se"]
    assert constant["verdict"] == "open"
    assert abs(amortized["gap"]) < OPTIMISATION_RESIDUAL + 4 * amortized["gap_se"]


@pytest.mark.slow
def test_linear_ideal_encoder_closes_the_gap_and_converges_faster(
    quick_summary: Callable[[str], pd.DataFrame],
    verdicts: Callable[[pd.DataFrame, list[str]], list[str]],
):
    summary = quick_summary("linear")
    assert verdicts(summary, ["constant", DEGREE_ONE]) == ["open", "closed"]
    degree_one = summary.loc[DEGREE_ONE, "median_steps_1pct"]
    assert degree_one < summary.loc[REFERENCE_LABEL, "median_steps_1pct"]
