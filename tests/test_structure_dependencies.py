"""avi.check: the verdict of Theorem 3.4 / Proposition 3.8 read from a model's dependencies.

Each test states the verdict and the encoder offsets that the paper's results imply for its
model (Definition 3.3 and Theorem 3.4 for simple hierarchical models, the saw model's expanded
domain, Proposition 3.8 for HMMs and dense models).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import avi
from avi.paper.experiments import linear

RNG = np.random.default_rng(0)
X = RNG.normal(size=120).astype(np.float32)


def assert_report(report: avi.StructureReport, verdict: str, inputs: tuple[int, ...] | None):
    assert isinstance(report, avi.StructureReport)
    assert (report.verdict, report.inputs) == (verdict, inputs), report.explanation


# --------------------------------------------------------------------- simple hierarchical


def nonlinear(x):
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1))
        loc = theta + z * (1 + jnp.sin(z))
        numpyro.sample("x", dist.Normal(loc, jnp.exp(jnp.cos(z))), obs=x)


def poisson_random_effects(covariate, counts):
    """Group intercepts a_g (local, data plate = groups), per-group covariates and counts."""
    b0 = numpyro.sample("b0", dist.Normal(0, 1))
    b1 = numpyro.sample("b1", dist.Normal(0, 1))
    scale = numpyro.sample("scale", dist.HalfNormal(1))
    with numpyro.plate("groups", covariate.shape[0], dim=-2):
        a = numpyro.sample("a", dist.Normal(0, scale))
        with numpyro.plate("visits", covariate.shape[1], dim=-1):
            numpyro.sample("y", dist.Poisson(jnp.exp(b0 + a + b1 * covariate)), obs=counts)


def logistic_random_effects(covariate, y):
    beta = numpyro.sample("beta", dist.Normal(0, 1))
    scale = numpyro.sample("scale", dist.HalfNormal(1))
    with numpyro.plate("subjects", y.shape[0], dim=-2):
        u = numpyro.sample("u", dist.Normal(0, scale))
        with numpyro.plate("trials", y.shape[1], dim=-1):
            numpyro.sample("y", dist.Bernoulli(logits=u + beta * covariate), obs=y)


def positive_locals(x):
    scale = numpyro.sample("scale", dist.HalfNormal(1))
    with numpyro.plate("data", x.shape[0]):
        rate = numpyro.sample("rate", dist.LogNormal(0, scale))
        shape = numpyro.sample("shape", dist.Gamma(2.0, 1 / scale))
        numpyro.sample("x", dist.Gamma(shape, rate), obs=x)


def multivariate_locals(x):
    loc = numpyro.sample("loc", dist.Normal(0, 1).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.MultivariateNormal(jnp.zeros(3), scale_tril=jnp.eye(3)))
        numpyro.sample("x", dist.Normal(loc + z, 1).to_event(1), obs=x)


def deep_generative(x, latent_dim=2):
    """Bayesian decoder: global weights, z_n ~ N(0, I_2), x_n ~ N(W z_n + b, I)."""
    weights = numpyro.sample("W", dist.Normal(0, 1).expand([x.shape[1], latent_dim]).to_event(2))
    bias = numpyro.sample("b", dist.Normal(0, 1).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
        numpyro.sample("x", dist.Normal(jnp.tanh(z @ weights.T + bias), 1).to_event(1), obs=x)


def test_linear_model():
    report = avi.check(linear.model, linear.simulate(200))
    assert_report(report, "simple-hierarchical", (0,))
    assert "'z'" in report.explanation and "Theorem 3.4" in report.explanation


def test_nonlinear_model():
    assert_report(avi.check(nonlinear, X), "simple-hierarchical", (0,))


def test_poisson_random_effects():
    covariate = RNG.normal(size=(40, 5)).astype(np.float32)
    counts = RNG.poisson(2.0, size=(40, 5))
    report = avi.check(poisson_random_effects, covariate, counts)
    assert_report(report, "simple-hierarchical", (0,))
    assert "'a'" in report.explanation


def test_logistic_random_effects():
    covariate = RNG.normal(size=(30, 4)).astype(np.float32)
    y = RNG.integers(0, 2, size=(30, 4)).astype(np.float32)
    assert_report(avi.check(logistic_random_effects, covariate, y), "simple-hierarchical", (0,))


def test_constrained_locals_with_a_halfnormal_global_scale():
    x = RNG.gamma(2.0, size=50).astype(np.float32)
    assert_report(avi.check(positive_locals, x), "simple-hierarchical", (0,))


def test_multivariate_locals():
    x = RNG.normal(size=(40, 3)).astype(np.float32)
    assert_report(avi.check(multivariate_locals, x), "simple-hierarchical", (0,))


def test_deep_generative_model():
    x = RNG.normal(size=(50, 5)).astype(np.float32)
    assert_report(avi.check(deep_generative, x), "simple-hierarchical", (0,))


def test_masked_observations_and_a_discrete_likelihood():
    """A mask or a symmetric discrete likelihood hides the dependency at some data only."""

    def masked_categorical(x, y, observed):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0, 1))
            with numpyro.handlers.mask(mask=observed):
                numpyro.sample("x", dist.Normal(z, 1), obs=x)
            logits = jnp.stack([z, w[0] * z, w[1] + z], axis=-1)
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    y = RNG.integers(0, 3, size=X.shape[0])
    report = avi.check(masked_categorical, X, y, RNG.random(X.shape[0]) > 0.3)
    assert_report(report, "simple-hierarchical", (0,))


# ------------------------------------------------------------------------- expanded domain


def saw(x, alpha=0.75):
    """The paper's saw series (Eq. 11): z_n ~ N(x_{n-1}, 1), x_n ~ N(alpha (theta + z_n), 1)."""
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    x_prev = jnp.concatenate([jnp.zeros(1), x[:-1]])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(x_prev, 1))
        numpyro.sample("x", dist.Normal(alpha * (theta + z), 1), obs=x)


def saw_second_order(x):
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    lag1 = jnp.concatenate([jnp.zeros(1), x[:-1]])
    lag2 = jnp.concatenate([jnp.zeros(2), x[:-2]])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(lag1 + lag2, 1))
        numpyro.sample("x", dist.Normal(theta + z, 1), obs=x)


def test_saw_model():
    report = avi.check(saw, X)
    assert_report(report, "expanded-domain", (-1, 0))
    assert "'z'" in report.explanation and "its prior" in report.explanation
    assert avi.Window(offsets=report.inputs).offsets == (-1, 0)


def test_second_order_saw():
    assert_report(avi.check(saw_second_order, X), "expanded-domain", (-2, -1, 0))


def test_covariates_at_an_offset():
    def lagged_covariate(c, x):
        beta = numpyro.sample("beta", dist.Normal(0, 1))
        c_next = jnp.concatenate([c[1:], jnp.zeros(1)])
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(beta * c_next, 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    assert_report(avi.check(lagged_covariate, X, X), "expanded-domain", (0, 1))


def test_discrete_covariate_at_an_offset():
    def lagged_category(c, x):
        mu = numpyro.sample("mu", dist.Normal(0, 1).expand([3]).to_event(1))
        c_prev = jnp.concatenate([jnp.zeros(1, dtype=c.dtype), c[:-1]])
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu[c_prev], 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    c = RNG.integers(0, 3, size=X.shape[0]).astype(np.int32)
    assert_report(avi.check(lagged_category, c, X), "expanded-domain", (-1, 0))


@settings(max_examples=4, deadline=None)
@given(st.sets(st.integers(-3, 3), min_size=1, max_size=3))
def test_window_offsets_are_recovered(offsets):
    def windowed(x):
        padded = jnp.pad(x, 3)
        shifted = sum(padded[3 + k : 3 + k + x.shape[0]] for k in offsets)
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.sin(shifted), 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    report = avi.check(windowed, X)
    expected = tuple(sorted(offsets | {0}))
    verdict = "simple-hierarchical" if expected == (0,) else "expanded-domain"
    assert_report(report, verdict, expected)


# ------------------------------------------------------------------------- not amortizable


def hmm_cumsum(x):
    """HMM written vectorized: z = cumsum(eps), so x_n depends on eps_1..eps_n."""
    with numpyro.plate("data", x.shape[0]):
        eps = numpyro.sample("eps", dist.Normal(0, 1))
        numpyro.sample("x", dist.Normal(jnp.cumsum(eps), 1), obs=x)


def hmm_random_walk(x):
    """HMM as one MVN outside the plate: z_1 ~ N(0, 1), z_n ~ N(z_{n-1}, 1), i.e. z = L eps with
    L the lower-triangular matrix of ones (tridiagonal precision)."""
    n = x.shape[0]
    walk = jnp.tril(jnp.ones((n, n)))
    z = numpyro.sample("z", dist.MultivariateNormal(jnp.zeros(n), scale_tril=walk))
    with numpyro.plate("data", n):
        numpyro.sample("x", dist.Normal(z, 1), obs=x)


def gaussian_process(t, x):
    """f ~ MVN(0, K) over all data, x_n ~ N(f_n, s)."""
    lengthscale = numpyro.sample("lengthscale", dist.LogNormal(0, 0.5))
    noise = numpyro.sample("noise", dist.HalfNormal(1))
    kernel = jnp.exp(-0.5 * ((t[:, None] - t[None, :]) / lengthscale) ** 2) + 0.1 * jnp.eye(len(t))
    f = numpyro.sample("f", dist.MultivariateNormal(jnp.zeros(len(t)), kernel))
    with numpyro.plate("data", t.shape[0]):
        numpyro.sample("x", dist.Normal(f, noise), obs=x)


def mixed_coupling(x, y):
    """'chain' is an HMM over the data, 'w' a plain per-datum latent."""
    with numpyro.plate("data", x.shape[0]):
        eps = numpyro.sample("chain", dist.Normal(0, 1))
        w = numpyro.sample("w", dist.Normal(0, 1))
        numpyro.sample("x", dist.Normal(jnp.cumsum(eps), 1), obs=x)
        numpyro.sample("y", dist.Normal(w, 1), obs=y)


def test_hmm_vectorized_with_cumsum():
    report = avi.check(hmm_cumsum, X)
    assert_report(report, "not-amortizable", None)
    assert "'eps' is coupled" in report.explanation and "Proposition 3.8" in report.explanation


def test_hmm_as_a_coupled_multivariate_normal():
    report = avi.check(hmm_random_walk, X[:40])
    assert_report(report, "not-amortizable", None)
    assert "outside the plate" in report.explanation and "offsets -1 and 1" in report.explanation


def test_hmm_with_a_factor():
    def hmm_factor(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0, 10))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)
        numpyro.factor("chain", dist.Normal(z[:-1], 1).log_prob(z[1:]).sum())

    report = avi.check(hmm_factor, X)
    assert_report(report, "not-amortizable", None)
    assert "the factor 'chain'" in report.explanation


def test_dense_gaussian_process():
    t = np.linspace(0, 10, 40).astype(np.float32)
    report = avi.check(gaussian_process, t, X[:40])
    assert_report(report, "not-amortizable", None)
    assert "'f' is coupled" in report.explanation


def test_mixed_coupled_and_uncoupled_locals_names_the_coupled_one():
    report = avi.check(mixed_coupling, X, X)
    assert_report(report, "not-amortizable", None)
    assert "'chain' is coupled" in report.explanation
    assert "'w' is coupled" not in report.explanation


def test_local_depending_on_the_mean_of_the_data_is_a_global_influence():
    """z_n ~ N(mean x, 1): the ideal factor is a function of (mean x, x_n), and mean x is the
    same for every n, so an encoder of x_n represents it (a global fixed by the data)."""

    def global_mean_prior(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.mean(x), 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    report = avi.check(global_mean_prior, X)
    assert_report(report, "simple-hierarchical", (0,))
    assert report.summaries == ("argument 'x'",)
    assert "summary of all of argument 'x'" in report.explanation


def test_mean_of_the_data_is_found_when_the_plate_size_is_an_argument():
    def global_mean_prior(x, num_data):
        with numpyro.plate("data", num_data):
            z = numpyro.sample("z", dist.Normal(jnp.mean(x), 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    report = avi.check(global_mean_prior, X, X.shape[0])
    assert_report(report, "simple-hierarchical", (0,))
    assert report.summaries == ("argument 'x'",)
