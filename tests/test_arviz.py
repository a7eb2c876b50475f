"""``fit.to_arviz()`` as ArviZ users expect: several chains, deterministic sites, plate-named
dimensions, posterior predictive, pointwise log likelihood (az.loo runs), observed data, and
new-data predictions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

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


def test_arviz_summaries_and_plots_without_warnings(schools):
    idata = schools.to_arviz(num_samples=500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = az.summary(idata, kind="stats")
        az.plot_forest(idata, var_names=["theta"])
    assert {"mu", "tau", "theta[0]"} <= set(table.index)


def test_loo_runs_on_the_pointwise_log_likelihood(schools):
    """PSIS-LOO with draws of q as if they were the posterior's: it runs; its Pareto k's judge
    q as a proposal for each leave-one-out posterior (measured: 6 to 8 of the 8 above 0.7 for
    mean-field eight schools, depending on the draws, so ArviZ warns)."""
    idata = schools.to_arviz(num_samples=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = az.loo(idata, pointwise=True)
    assert np.isfinite(result.elpd_loo) and result.pareto_k.shape == (8,)


def test_new_data_go_to_predictions():
    x = linear.simulate(200, seed=0)
    fit = avi.fit(linear.model, x, family=avi.Amortized(avi.Polynomial(1)), progress=False)
    idata = fit.to_arviz(np.linspace(-1, 1, 7).astype(np.float32), num_samples=30)
    assert idata.predictions["z"].shape == (4, 30, 7)
    assert set(idata.posterior.data_vars) == {"theta"}


def test_a_grouped_fit_gives_its_rows_not_the_padded_layout():
    """Radon (12 counties): observed values and replicates on the houses (sorted by county,
    in their order within it), not the (J, S) padding the engine fits; the log likelihood per
    county; the county of each house in constant_data; summaries and forest plots silent."""
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
