"""Learned model parameters (numpyro.param, numpyro.contrib.module) against closed forms.

The model x_n ~ N(z_n, 1), z_n ~ N(mu, 1) with mu a parameter has the marginal
x_n ~ N(mu, 2): the maximum-likelihood mu is mean(x), its standard error sqrt(2 / N), and
since the posterior of each z_n is Gaussian, a Gaussian family's ELBO at its optimum equals
log p(x; mu) with mu = mean(x). A certified fit is within 0.07 standard errors of the
optimum in each learned coordinate (tolerance 2.5e-3 nats); the tests allow 0.25.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.module import eqx_module, random_eqx_module
from numpyro.distributions import constraints
from scipy.stats import norm

import avi
from avi.errors import ConvergenceWarning, ModelError

NUM_DATA = 400


def mean_model(x):
    mu = numpyro.param("mu", 0.0)
    numpyro.deterministic("mu_twice", 2 * mu)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def scale_model(x):
    s = numpyro.param("s", 0.5, constraint=constraints.positive)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, s), obs=x)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(1.5, np.sqrt(2.0), NUM_DATA).astype(np.float32)


@pytest.fixture(scope="module")
def mean_fit(data):
    return avi.fit(mean_model, data, family=avi.Amortized(avi.Polynomial(1)), seed=0)


def test_param_mean_is_the_maximum_likelihood_estimate(mean_fit, data):
    se = np.sqrt(2.0 / NUM_DATA)
    assert mean_fit.converged
    assert abs(float(mean_fit.model_params["mu"]) - data.mean()) < 0.25 * se
    names = [b.name for b in mean_fit.certificate.blocks]
    assert "model" in names


def test_elbo_and_evidence_reach_the_marginal_likelihood(mean_fit, data):
    """At the optimum q is the exact posterior: ELBO = L_K = log p(x; mean(x))."""
    exact = float(np.sum(norm.logpdf(data, data.mean(), np.sqrt(2.0))))
    elbo = mean_fit.elbo(num_particles=500)
    assert abs(elbo.mean - exact) < 3 * elbo.stderr + 0.05
    evidence = mean_fit.log_evidence(num_particles=100, num_estimates=4)
    assert abs(evidence.mean - exact) < 3 * evidence.stderr + 0.05


def test_posterior_and_sample_use_the_learned_params(mean_fit, data):
    mu = float(mean_fit.model_params["mu"])
    new = np.array([0.0, 3.0], np.float32)
    q = mean_fit.posterior(new)["z"]  # exact posterior N((mu + x) / 2, 1 / 2)
    np.testing.assert_allclose(q.loc, (mu + new) / 2, atol=0.03)
    draws = mean_fit.sample(3, new)
    np.testing.assert_allclose(draws["mu_twice"], 2 * mu, rtol=1e-6)
    figure = avi.plot_aggregate_posterior(mean_fit, "z")
    plt.close(figure)
    idata = mean_fit.to_arviz(num_samples=5, chains=2)
    np.testing.assert_allclose(idata.posterior["mu_twice"], 2 * mu, rtol=1e-6)


def test_positive_param_is_learned_in_unconstrained_space(data):
    """x_n ~ N(0, 1 + s^2) with the data's mean removed: the ML s^2 is mean(x^2) - 1."""
    x = data - data.mean()
    fit = avi.fit(scale_model, x, family=avi.Amortized(avi.Polynomial(1)), seed=0)
    s = float(fit.model_params["s"])
    expected = np.sqrt(np.mean(x**2) - 1.0)
    # se of s^2 is about sqrt(2 / N) (1 + s^2); of s that over 2 s
    se = np.sqrt(2.0 / NUM_DATA) * (1 + expected**2) / (2 * expected)
    assert fit.converged and s > 0
    assert abs(s - expected) < 0.25 * se
    assert np.exp(float(fit.params.model["s"][0])) == pytest.approx(s, rel=1e-6)


def test_minibatch_fit_learns_the_same_param():
    x = np.random.default_rng(1).normal(-1.0, np.sqrt(2.0), 4000).astype(np.float32)
    fit = avi.fit(
        mean_model, x, family=avi.Amortized(avi.Polynomial(1)), batch_size=200, seed=0
    )
    se = np.sqrt(2.0 / x.size)
    assert abs(float(fit.model_params["mu"]) - x.mean()) < 0.5 * se


def ppca_model(decoder):
    """Probabilistic PCA with one latent: x_n ~ N(W z_n + b, 0.3^2 I), W, b an eqx.nn.Linear."""

    def model(x):
        net = eqx_module("decoder", decoder)
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            numpyro.sample("x", dist.Normal(jax.vmap(net)(z), 0.3).to_event(1), obs=x)

    return model


@pytest.fixture(scope="module")
def ppca():
    rng = np.random.default_rng(2)
    direction = np.array([0.6, 0.8, 0.0], np.float32)
    x = (rng.normal(size=(500, 1)) * 1.5 * direction + rng.normal(0, 0.3, (500, 3))).astype(
        np.float32
    ) + np.array([1.0, -1.0, 0.5], np.float32)
    decoder = eqx.nn.Linear(1, 3, key=jax.random.PRNGKey(0))
    model = ppca_model(decoder)
    fit = avi.fit(model, x, family=avi.Amortized(avi.Polynomial(1)), seed=0)
    return x, decoder, model, fit


def test_eqx_module_decoder_is_probabilistic_pca(ppca):
    """Tipping and Bishop 1999: W W^T = u (l - sigma^2) u^T with (l, u) the sample
    covariance's top eigenpair, b = mean(x); one latent, so q is exact at the optimum."""
    x, _, _, fit = ppca
    learned = fit.model_params["decoder$params"]
    w, b = np.asarray(learned.weight), np.asarray(learned.bias)
    values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))
    expected = (values[-1] - 0.09) * np.outer(vectors[:, -1], vectors[:, -1])
    np.testing.assert_allclose(b, x.mean(axis=0), atol=0.03)
    np.testing.assert_allclose(w @ w.T, expected, atol=0.05)


def test_save_and_load_keep_the_learned_params(ppca, tmp_path):
    x, decoder, model, fit = ppca
    fit.save(tmp_path / "fit")
    loaded = avi.load(tmp_path / "fit", model)
    new = x[:5]
    np.testing.assert_array_equal(loaded.posterior(new)["z"].mean, fit.posterior(new)["z"].mean)
    by_path = loaded.model_params["decoder$params"]
    np.testing.assert_array_equal(
        by_path[".weight"], np.asarray(fit.model_params["decoder$params"].weight)
    )
    refined = avi.refine(loaded, new, num_steps=50)
    np.testing.assert_array_equal(
        np.asarray(refined.model_params["decoder$params"].weight), by_path[".weight"]
    )


def test_loaded_array_params_and_new_data_draws(mean_fit, tmp_path):
    mean_fit.save(tmp_path / "fit")
    loaded = avi.load(tmp_path / "fit", mean_model)
    assert float(loaded.model_params["mu"]) == float(mean_fit.model_params["mu"])
    draws = loaded.sample(2, np.zeros(3, np.float32))
    np.testing.assert_allclose(draws["mu_twice"], 2 * float(loaded.model_params["mu"]), rtol=1e-6)


def test_random_eqx_module_weights_are_globals():
    """Bayesian linear regression written with random_eqx_module: its weights are global
    latents; NumPyro's parameter site of the module has every leaf replaced by a prior, so
    nothing reads it and it stays where it started."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 2)).astype(np.float32)
    y = (features @ np.array([1.0, -2.0]) + 0.5 + rng.normal(0, 0.5, 200)).astype(np.float32)
    linear = eqx.nn.Linear(2, "scalar", key=jax.random.PRNGKey(0))

    def model(features, y):
        net = random_eqx_module("reg", linear, prior=dist.Normal(0.0, 10.0))
        with numpyro.plate("data", features.shape[0]):
            u = numpyro.sample("u", dist.Normal(0.0, 0.1))
            numpyro.sample("y", dist.Normal(jax.vmap(net)(features) + u, 0.5), obs=y)

    fit = avi.fit(model, features, y, family=avi.Amortized(avi.Polynomial(1)), seed=0)
    names = [s.name for s in fit.traced.layout.globals]
    assert names == ["reg/weight", "reg/bias"]
    weight = fit.posterior()["reg/weight"].mean
    np.testing.assert_allclose(weight[0], [1.0, -2.0], atol=0.15)
    np.testing.assert_array_equal(fit.model_params["reg$params"].weight, linear.weight)


def test_short_fit_names_the_unsettled_model_block(data):
    with pytest.warns(ConvergenceWarning, match=r"model \(1 parameters\): NOT settled"):
        fit = avi.fit(
            mean_model, data + 20.0, family=avi.Amortized(avi.Polynomial(1)), max_steps=100,
            seed=0,
        )
    assert not fit.converged


def test_param_in_the_data_plate_is_refused(data):
    def model(x):
        with numpyro.plate("data", x.shape[0]):
            m = numpyro.param("m", jnp.zeros(x.shape[0]))
            z = numpyro.sample("z", dist.Normal(m, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ModelError, match="'m' is declared inside the data plate"):
        avi.fit(model, data, family="factorized", num_steps=10)


def test_mutable_state_is_refused(data):
    def model(x):
        state = numpyro.primitives.mutable("net$state", {"count": jnp.zeros(())})
        state["count"] = state["count"] + 1
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ModelError, match="'net\\$state' is a numpyro mutable"):
        avi.fit(model, data, family="factorized", num_steps=10)


def test_empirical_fisher_of_the_mean_is_the_elbo_curvature(mean_fit, data):
    """For mu the score of datum n is z_n - mu, so F = sum_n E_q[(z_n - mu)^2] =
    sum_n (1/2 + ((x_n - mu) / 2)^2) under the exact posterior N((x_n + mu) / 2, 1/2), about N:
    the ELBO's curvature in mu (-d^2/dmu^2 of sum_n log N(z_n; mu, 1) = N). Four draws of all
    400 data: Var (z - mu)^2 = 1/2 + 2 (m_n - mu)^2, about 1.5, so a relative sd of
    sqrt(400 * 1.5 / 4) / 400 = 3%; allowed 8%."""
    from avi.vi.certify_params import score_rows, scores

    mu = float(mean_fit.model_params["mu"])
    shape = score_rows(NUM_DATA, 1)
    assert shape == (4, NUM_DATA)
    rows = np.asarray(scores(jax.random.PRNGKey(0), mean_fit.params, mean_fit.problem, *shape))
    expected = np.sum(0.5 + ((data - mu) / 2) ** 2)
    assert float(rows[:, 0] @ rows[:, 0]) == pytest.approx(expected, rel=0.08)


def test_grouped_model_learns_the_group_mean():
    """a_j ~ N(mu, 1), y_ij ~ N(a_j, 1), four houses per county: the group means are
    N(mu, 1 + 1/4) apart, so the ML mu is their mean (se sqrt(1.25 / 50) = 0.16); the
    factorized fit is exact at its optimum."""

    def model(county, num_counties, y=None):
        mu = numpyro.param("mu", 0.0)
        with numpyro.plate("county", num_counties):
            a = numpyro.sample("a", dist.Normal(mu, 1.0))
        with numpyro.plate("house", county.shape[0]):
            numpyro.sample("y", dist.Normal(a[county], 1.0), obs=y)

    rng = np.random.default_rng(4)
    county = np.repeat(np.arange(50), 4).astype(np.int32)
    y = (rng.normal(2.0, 1.0, 50)[county] + rng.normal(0, 1, 200)).astype(np.float32)
    fit = avi.fit(model, county, 50, y=y, family="factorized", seed=0)
    means = np.array([y[county == j].mean() for j in range(50)])
    assert fit.converged
    assert abs(float(fit.model_params["mu"]) - means.mean()) < 0.25 * np.sqrt(1.25 / 50)
