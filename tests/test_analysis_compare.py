"""avi.analysis.compare on the paper's linear model, checked against its closed forms (Prop. 3.6).

N = 2,000 (the paper uses 10,000; the closed forms hold for any N, and the fits converge to
within 0.002 nats of the exact optima, far below the Monte Carlo errors used as tolerances).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

import avi
from avi.analysis.compare import (
    EVAL_SEED,
    NOT_CONVERGED,
    REFERENCE,
    SUMMARY_COLUMNS,
    over_seeds,
    seeds_verdict,
    verdict,
)
from avi.paper.experiments import linear

N = 2_000


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return linear.simulate(N, seed=0)


@pytest.fixture(scope="module")
def comparison(x: np.ndarray) -> avi.Comparison:
    return avi.compare(
        linear.model,
        x,
        families={"constant": avi.Constant(), "degree 1": avi.Amortized(avi.Polynomial(1))},
        progress=False,
    )


def exact_contributions(fit: avi.Fit, x: np.ndarray) -> np.ndarray:
    """Closed-form l_n of the fitted q: the per-datum terms of linear.elbo."""
    tau, sigma = linear.TAU, linear.SIGMA
    q_theta = fit.posterior()["theta"]
    m, vt = float(q_theta.loc), float(q_theta.scale) ** 2
    loc, log_scale = (np.asarray(a, np.float64)[:, 0] for a in fit.local_factors())
    v = np.exp(2 * log_scale)
    likelihood = -0.5 * ((x - m - tau * loc) ** 2 + vt + tau**2 * v) / sigma**2 - math.log(
        sigma * math.sqrt(2 * math.pi)
    )
    prior = -0.5 * (loc**2 + v + math.log(2 * math.pi))
    return likelihood + prior + 0.5 * np.log(2 * math.pi * math.e * v)


def row(comparison: avi.Comparison, family: str):
    summary = comparison.summary()
    return summary[summary["family"] == family].iloc[0]


def test_summary_table_adds_the_reference(comparison: avi.Comparison):
    summary = comparison.summary()
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert comparison.added_reference and comparison.reference == REFERENCE
    assert list(summary["family"]) == [REFERENCE, "constant", "degree 1"]
    assert list(summary["num_parameters"]) == [2 * N + 2, 4, 5]
    reference = row(comparison, REFERENCE)
    assert (reference["verdict"], reference["gap"], reference["gap_stderr"]) == ("reference", 0, 0)


def test_degree_one_closes_the_gap(comparison: avi.Comparison):
    """Prop. 3.6: a linear mean with a shared scale holds the ideal inference function."""
    degree_one = row(comparison, "degree 1")
    assert degree_one["verdict"] == "closed"
    # Each fit is certified within its tolerance (0.05 + 1e-5 N nats for a local block) of its
    # family's optimum, so the paired gap may differ from 0 by that much beyond Monte Carlo.
    assert abs(degree_one["gap"]) <= 2 * degree_one["gap_stderr"] + 0.05 + 1e-5 * 2_000
    assert degree_one["gap_stderr"] < 0.01  # common random numbers: a sharp test


def test_constant_gap_equals_the_closed_form(comparison: avi.Comparison, x: np.ndarray):
    """gap = tau^2 S / (2 sigma^2 (sigma^2 + tau^2)) within 4 Monte Carlo standard errors."""
    constant = row(comparison, "constant")
    assert constant["verdict"] == "open"
    assert abs(constant["gap"] - linear.constant_gap(x)) <= 4 * constant["gap_stderr"]
    assert constant["gap_stderr"] < 0.01 * linear.constant_gap(x)


def test_time_to_convergence_follows_the_one_percent_criterion(
    comparison: avi.Comparison, x: np.ndarray
):
    """F-VI and degree 1 come within 1% of F-VI's ELBO; the constant (gap ~ 4.6%) never does."""
    summary = comparison.summary().set_index("family")
    for name in (REFERENCE, "degree 1"):
        assert 0 <= summary.loc[name, "time_to_convergence"] <= summary.loc[name, "wall_time"]
    assert math.isnan(summary.loc["constant", "time_to_convergence"])
    assert linear.constant_gap(linear.simulate(N, seed=0)) > 0.01 * abs(
        summary.loc[REFERENCE, "elbo"]
    )


def test_per_datum_gaps_match_the_closed_form(comparison: avi.Comparison, x: np.ndarray):
    """Per-datum gaps of the fitted q's in closed form; the estimate's error is Monte Carlo only.

    Each datum's error is standardized by its Monte Carlo standard error (sd of its paired
    draws / sqrt(draws)): the largest |z| over 2,000 data stays below 5, and the mean z^2 near 1.
    At the optima the gap of datum n is tau^2 (x_n - xbar)^2 / (2 sigma^2 (sigma^2 + tau^2)),
    whose sum is linear.constant_gap.
    """
    draws = 400
    estimate = comparison.per_datum_gaps("constant", num_particles=draws)
    fits = comparison.fits
    exact = exact_contributions(fits[REFERENCE][0], x) - exact_contributions(fits["constant"][0], x)
    paired = avi.per_datum_elbo_draws(
        fits[REFERENCE][0], num_particles=draws, seed=EVAL_SEED
    ) - avi.per_datum_elbo_draws(fits["constant"][0], num_particles=draws, seed=EVAL_SEED)
    np.testing.assert_allclose(estimate, paired.mean(axis=0), atol=1e-4)  # float32 order
    z = (estimate - exact) / (paired.std(axis=0, ddof=1) / math.sqrt(draws))
    assert estimate.shape == (N,)
    assert np.max(np.abs(z)) < 5
    assert 0.8 < np.mean(z**2) < 1.2
    at_optima = (
        linear.TAU**2
        * (x - x.mean()) ** 2
        / (2 * linear.SIGMA**2 * (linear.SIGMA**2 + linear.TAU**2))
    )
    assert np.max(np.abs(exact - at_optima)) < 0.01
    assert np.sum(at_optima) == pytest.approx(linear.constant_gap(x))


def test_refinement_recovers_the_constant_gap(comparison: avi.Comparison, x: np.ndarray):
    """F-VI from the constant's factors reaches F-VI's optimum; at degree 1 nothing is left.

    The F-VI gradient at the constant fit is, in closed form (mean-field Gaussian on the
    linear model), d/dmu_n = -mu_n + tau (x_n - m - tau mu_n) / sigma^2 and
    d/dlog s_n = 1 - s_n^2 (1 + tau^2 / sigma^2).
    """
    table = comparison.refinement(gradient_particles=1000, progress=False).set_index("family")
    constant = table.loc["constant"]
    assert constant["recovered"] >= 0.99
    assert abs(constant["refined_gap"]) <= 4 * constant["refined_gap_stderr"] + 0.05
    assert math.isnan(table.loc["degree 1", "recovered"])

    tau, sigma = linear.TAU, linear.SIGMA
    fit = comparison.fits["constant"][0]
    m = float(fit.posterior()["theta"].loc)
    loc, log_scale = (np.asarray(a, np.float64)[:, 0] for a in fit.local_factors())
    d_loc = -loc + tau * (x - m - tau * loc) / sigma**2
    d_log_scale = 1 - np.exp(2 * log_scale) * (1 + tau**2 / sigma**2)
    exact_norm = math.sqrt(np.sum(d_loc**2) + np.sum(d_log_scale**2))
    assert abs(constant["gradient_norm"] - exact_norm) <= 4 * constant["gradient_noise"]
    assert constant["gradient_norm"] > 20 * constant["gradient_noise"]
    degree_one = table.loc["degree 1"]
    assert degree_one["gradient_norm"] <= 4 * degree_one["gradient_noise"] + 0.05


def test_plots_return_figures(comparison: avi.Comparison, tmp_path):
    elbo = comparison.plot_elbo()
    assert isinstance(elbo, Figure)
    axes = elbo.axes[0]
    labels = [line.get_label() for line in axes.get_lines()]
    assert {REFERENCE, "constant", "degree 1"} <= set(labels)
    histogram = comparison.plot_per_datum_gaps("constant", num_particles=10)
    assert isinstance(histogram, Figure)
    assert sum(patch.get_height() for patch in histogram.axes[0].patches) == N
    elbo.savefig(tmp_path / "elbo.png")
    assert (tmp_path / "elbo.png").stat().st_size > 0


def test_several_seeds_give_one_fit_each(x: np.ndarray):
    comparison = avi.compare(
        linear.model,
        x,
        families={"F": avi.Factorized(), "degree 1": avi.Amortized(avi.Polynomial(1))},
        seeds=[0, 1],
        num_steps=300,
        eval_particles=50,
        progress=False,
    )
    assert not comparison.added_reference and comparison.reference == "F"
    assert [len(fits) for fits in comparison.fits.values()] == [2, 2]
    summary = comparison.summary()
    assert list(summary["steps"]) == [300, 300]
    for position, seed in enumerate((0, 1)):
        fit = comparison.fits["degree 1"][position]
        np.testing.assert_array_equal(
            comparison.draws["degree 1"][position], fit.elbo_draws(50, seed=EVAL_SEED + seed)
        )
    first, second = (np.asarray(f.params.global_loc) for f in comparison.fits["F"])
    assert not np.array_equal(first, second)  # the seeds differ


def test_over_seeds_counts_the_spread_between_seeds():
    """stderr = max(Monte Carlo stderr of the mean, sd over seeds / sqrt(seeds))."""
    quiet = over_seeds([avi.Estimate(1.0, 0.1), avi.Estimate(1.0, 0.1)])
    assert quiet == pytest.approx(avi.Estimate(1.0, math.sqrt(0.02) / 2))
    spread = over_seeds([avi.Estimate(0.0, 0.01), avi.Estimate(2.0, 0.01)])
    assert spread == pytest.approx(avi.Estimate(1.0, math.sqrt(2) / math.sqrt(2)))
    assert verdict(avi.Estimate(0.2, 0.1)) == "closed"
    assert verdict(avi.Estimate(0.21, 0.1)) == "open"
    assert verdict(avi.Estimate(0.0, 0.0)) == "closed"
    assert verdict(avi.Estimate(0.29, 0.1), tolerance=0.1) == "closed"
    assert verdict(avi.Estimate(0.29, 0.1), tolerance=0.05) == "open"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"families": {"bad": "mean-field"}}, avi.FamilyError, r"families\['bad'\]"),
        ({"families": {}}, avi.FamilyError, "non-empty"),
        ({"families": {"F-VI": avi.Constant()}}, avi.FamilyError, "F-VI"),
        ({"seeds": 0}, avi.AviError, "seeds=0"),
        ({"seeds": [1, 1]}, avi.AviError, "seeds"),
        ({"eval_particles": 1}, avi.AviError, "eval_particles=1"),
        ({"seed": 3}, avi.AviError, "seeds="),
        ({"tolerance": -1.0}, avi.AviError, "tolerance=-1.0"),
    ],
)
def test_bad_arguments_are_named(x: np.ndarray, kwargs, error, match):
    with pytest.raises(error, match=match):
        avi.compare(linear.model, x, **kwargs)


def test_unknown_family_name_is_named(comparison: avi.Comparison):
    with pytest.raises(avi.FamilyError, match="'quadratic' is not in this comparison"):
        comparison.per_datum_gaps("quadratic")


def test_verdicts_are_two_sided_and_seeds_must_agree():
    """A family that beats F-VI beyond noise has not met F-VI at its optimum (Prop. 2.1)."""
    assert verdict(avi.Estimate(-0.21, 0.1)) == NOT_CONVERGED
    assert verdict(avi.Estimate(-0.19, 0.1)) == "closed"
    assert verdict(avi.Estimate(-0.21, 0.1), inside=False) == "gain"
    assert seeds_verdict(("closed", "closed")) == "closed"
    assert seeds_verdict(("closed", "open")) == "seeds disagree"
    assert seeds_verdict(("open", NOT_CONVERGED)) == NOT_CONVERGED


def test_a_short_reference_is_refined_or_called_not_converged(x: np.ndarray):
    """50 steps leave F-VI's 4,002 parameters far below a 5-parameter encoder's optimum:
    measured -358 nats of "gap" (the issue saw -278 labelled "closed"). Kept as fitted, the
    verdict says the reference has not converged; by default F-VI is refined from the
    encoder's fit and the gaps are measured against that."""
    families = {"degree 1": avi.Amortized(avi.Polynomial(1))}
    options = {"num_steps": 50, "eval_particles": 100, "progress": False}
    kept = avi.compare(linear.model, x, families=families, refine_reference=False, **options)
    assert row(kept, "degree 1")["verdict"] == NOT_CONVERGED and not kept.lifted
    lifted = avi.compare(linear.model, x, families=families, **options)
    assert lifted.lifted["F-VI"][0][0] == "degree 1" and lifted.lifted["F-VI"][0][1] > 100
    assert "refined from 'degree 1'" in row(lifted, REFERENCE)["note"]
    degree_one = row(lifted, "degree 1")
    assert degree_one["gap"] > -2 * degree_one["gap_stderr"]
    assert degree_one["verdict"] in ("open", "closed")


def test_each_family_is_measured_against_the_f_vi_of_its_own_factor(x: np.ndarray):
    """Prop. 2.1 holds within one factor: an amortized full-rank family is measured against
    the factorized full-rank family, which is itself measured against the primary (diagonal)
    reference. On the linear model (one local coordinate) the two factors hold the same
    Gaussians and degree 1 is ideal: every verdict is closed."""
    families = {
        "F diag": avi.Factorized(),
        "F full": avi.Factorized(factor=avi.FullRank()),
        "A full": avi.Amortized(avi.Polynomial(1), factor=avi.FullRank()),
        "A diag": avi.Amortized(avi.Polynomial(1)),
    }
    comparison = avi.compare(
        linear.model, x, families=families, eval_particles=200, progress=False
    )
    assert comparison.reference == "F diag"
    assert comparison.reference_of("A full") == "F full"
    assert comparison.reference_of("F full") == "F diag"
    assert comparison.reference_of("A diag") == "F diag"
    assert "gap to 'F full'" in row(comparison, "A full")["note"]
    assert row(comparison, "A diag")["note"] == ""
    for name in ("F full", "A full", "A diag"):
        assert comparison.verdict(name) == "closed", comparison.summary()
    paired = comparison.draws["F full"][0] - comparison.draws["A full"][0]
    assert comparison.gap("A full").mean == pytest.approx(float(paired.mean()), rel=1e-6)
