"""``fit.to_arviz()`` as ArviZ users expect: several chains, deterministic sites, plate-named
dimensions, posterior predictive, pointwise log likelihood with each datum's latents integrated
out (az.loo runs without warnings on eight schools and radon; the closed form on the paper's
linear model), observed data, and new-data predictions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.stats import norm

import avi
from avi.paper.experiments import linear

matplotlib.use("Agg")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

REFERENCE = Path(__file__).parent / "data" / "references" / "eight_schools.json"


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


SIGMA = np.array([15, 10, 16, 11, 9, 11, 10, 18], np.float32)
Y = np.array([28, 8, -3, 7, -1, 1, 18, 12], np.float32)


@pytest.fixture(scope="module")
def schools():
    return avi.fit(eight_schools, SIGMA, y=Y, family="factorized", progress=False)


def test_groups_dims_and_deterministic_sites(schools):
    idata = schools.to_arviz(num_samples=200)
    posterior = idata.posterior
    assert posterior["theta"].dims == ("chain", "draw", "school")
    assert posterior["theta_tilde"].dims == ("chain", "draw", "school")
    assert posterior["mu"].shape == (4, 200)
    theta = posterior["mu"].values[..., None] + posterior["tau"].values[..., None] * (
        posterior["theta_tilde"].values
    )
    np.testing.assert_allclose(posterior["theta"].values, theta, rtol=1e-5, atol=1e-5)
    assert idata.posterior_predictive["y"].shape == (4, 200, 8)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "school")
    np.testing.assert_array_equal(idata.observed_data["y"].values, Y)
    np.testing.assert_array_equal(idata.constant_data["sigma"].values, SIGMA)
    assert idata.constant_data["sigma"].dims == ("school",)
    assert schools.sample(10)["theta"].shape == (10, 8)


def test_arviz_summaries_plots_and_loo_without_warnings(schools):
    """Measured (seed 0, 1,000 draws): Pareto k 0.11-0.36 on the marginal log likelihood,
    elpd_loo -30.69 (se 1.42), p_loo 0.40; avi.loo, which also corrects q's draws, gives -30.78.
    The conditional log likelihood gives k 0.41-0.96 (5 of 8 above 0.7): ArviZ warns."""
    idata = schools.to_arviz(num_samples=250)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = az.summary(idata, kind="stats")
        az.plot_forest(idata, var_names=["theta"])
        result = az.loo(idata, pointwise=True)
    assert {"mu", "tau", "theta[0]"} <= set(table.index)
    assert result.pareto_k.shape == (8,) and float(np.max(result.pareto_k)) <= 0.7
    assert -33 < result.elpd_loo < -29 and 0 < result.p_loo < 1.5


def test_the_conditional_log_likelihood_is_given_the_latents(schools):
    idata = schools.to_arviz(num_samples=20, log_likelihood="conditional")
    posterior = idata.posterior
    expected = norm.logpdf(Y, posterior["theta"].values, SIGMA)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["factorized", "amortized-degree-1"])
def test_the_marginal_log_likelihood_matches_the_closed_form(family: str):
    """Linear model: z_n integrated out, x_n | theta ~ N(theta, v), v = tau^2 + sigma^2,
    exactly. Each value is the log of a K = 16 draw importance average with q(z_n) as proposal.
    q(z_n) is close to p(z_n | x_n, theta) at q(theta)'s mean; at theta_s its mean is off by
    d = tau (theta_s - E theta) / v, so the log weights have sd d / sd(z_n) (~0.08 nats at
    2.5 posterior sd's) and the K-draw average a quarter of that; its bias, Var / (2K), is far
    smaller. Measured (seed 0, 200 data x 400 draws, factorized): rms error 0.008 nats, largest
    0.09 (at theta 2.5 sd out), per datum averaged over the draws at most 0.001 (the bias and
    the noise / sqrt(400)). Tolerances: twice to five times those."""
    x = linear.simulate(200, seed=0)
    chosen = "factorized" if family == "factorized" else avi.Amortized(avi.Polynomial(1))
    fit = avi.fit(linear.model, x, family=chosen, progress=False)
    idata = fit.to_arviz(num_samples=100)
    theta = idata.posterior["theta"].values[..., None]
    error = idata.log_likelihood["x"].values - norm.logpdf(
        x, theta, np.hypot(linear.TAU, linear.SIGMA)
    )
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")
    assert np.sqrt(np.mean(error**2)) < 0.02 and np.max(np.abs(error)) < 0.2
    assert np.max(np.abs(error.mean(axis=(0, 1)))) < 0.005


def test_bad_log_likelihood_options_are_named(schools):
    with pytest.raises(avi.AviError, match="log_likelihood='pointwise'"):
        schools.to_arviz(log_likelihood="pointwise")
    with pytest.raises(avi.AviError, match="local_draws=0"):
        schools.to_arviz(local_draws=0)


def test_new_data_go_to_predictions():
    x = linear.simulate(200, seed=0)
    fit = avi.fit(linear.model, x, family=avi.Amortized(avi.Polynomial(1)), progress=False)
    idata = fit.to_arviz(np.linspace(-1, 1, 7).astype(np.float32), num_samples=30)
    assert idata.predictions["z"].shape == (4, 30, 7)
    assert set(idata.posterior.data_vars) == {"theta"}


def test_a_grouped_fit_gives_its_rows_not_the_padded_layout():
    """Radon (12 counties): observed values and replicates on the houses (sorted by county,
    in their order within it), not the (J, S) padding the engine fits; the log likelihood per
    county (each county's intercept integrated out); the county of each house in constant_data;
    summaries and forest plots silent. (az.loo is not: with 12 counties, leaving out county 9
    moves the globals' posterior so far that its Pareto k reaches 0.6-0.8, avi.loo's too.)"""
    from avi.datasets import radon
    from avi.datasets.models import radon_intercept

    data = radon().subset(np.arange(12))
    fit = avi.fit(
        radon_intercept, data.county, data.floor, data.num_counties,
        log_radon=data.log_radon, num_steps=300, progress=False,
    )  # fmt: skip
    idata = fit.to_arviz(num_samples=50)
    houses = len(data.log_radon)
    order = np.argsort(data.county, kind="stable")
    np.testing.assert_allclose(idata.observed_data["y"].values, data.log_radon[order])
    assert idata.observed_data["y"].dims == ("house",)
    assert idata.posterior_predictive["y"].shape == (4, 50, houses)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "county")
    np.testing.assert_array_equal(idata.constant_data["county"].values, data.county[order])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        az.summary(idata, kind="stats")
        az.plot_forest(idata, var_names=["a"])


def test_radon_summaries_plots_and_loo_without_warnings():
    """All 85 counties, 1,000 steps (12-18 s; 40 s on two busy cores). Measured on the marginal
    log likelihood (seeds 0-2, 1,000 draws): Pareto k at most 0.42, elpd_loo -1048.2 (se 185:
    the counties hold 1 to 116 houses), p_loo 3.7; the converged fit gives the same, avi.loo
    -1049.5 with p_loo 5.4. The conditional log likelihood: 31 to 40 of the 85 k's above 0.7."""
    from avi.datasets import radon
    from avi.datasets.models import radon_intercept

    data = radon()
    fit = avi.fit(
        radon_intercept, data.county, data.floor, data.num_counties,
        log_radon=data.log_radon, num_steps=1000, progress=False,
    )  # fmt: skip
    idata = fit.to_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = az.summary(idata, kind="stats")
        az.plot_forest(idata, var_names=["a"])
        result = az.loo(idata, pointwise=True)
    assert "a[84]" in table.index
    assert result.pareto_k.shape == (85,) and float(np.max(result.pareto_k)) <= 0.7
    assert -1055 < result.elpd_loo < -1040
