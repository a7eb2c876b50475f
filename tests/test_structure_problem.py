"""avi.check's analysed problem: the sub-problem, the full data, local latents and inputs.

The model is cut to its first data when its plate follows its arguments and analysed on all data
otherwise; a latent outside the plate with one coordinate per datum is local; data may come as
keywords; errors of tracing name the fix.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi
from avi.paper.experiments import linear

RNG = np.random.default_rng(0)
X = RNG.normal(size=120).astype(np.float32)


def assert_report(report: avi.StructureReport, verdict: str, inputs: tuple[int, ...] | None):
    assert isinstance(report, avi.StructureReport)
    assert (report.verdict, report.inputs) == (verdict, inputs), report.explanation


def saw(x, alpha=0.75):
    """The paper's saw series (Eq. 11): z_n ~ N(x_{n-1}, 1), x_n ~ N(alpha (theta + z_n), 1)."""
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    x_prev = jnp.concatenate([jnp.zeros(1), x[:-1]])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(x_prev, 1))
        numpyro.sample("x", dist.Normal(alpha * (theta + z), 1), obs=x)


# ---------------------------------------------------------------- the analysed sub-problem


def inner_plate_locals(x):
    """x has shape (N, K): a data plate over rows and an inner plate of size K."""
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("data", x.shape[0], dim=-2), numpyro.plate("k", x.shape[1], dim=-1):
        z = numpyro.sample("z", dist.Normal(mu, 1))
        numpyro.sample("x", dist.Normal(z, 1), obs=x)


def test_linear_model_at_n_100000_analyses_a_sub_problem():
    report = avi.check(linear.model, linear.simulate(100_000))
    assert_report(report, "simple-hierarchical", (0,))
    assert "N = 100000" in report.explanation


def test_locals_in_an_inner_plate():
    x = RNG.normal(size=(40, 3)).astype(np.float32)
    report = avi.check(inner_plate_locals, x, plate="data")
    assert_report(report, "simple-hierarchical", (0,))
    assert "analysed on all data" in report.explanation


# -------------------------------------------------------------------------------- all data


def saw_fixed_size(x, num_data):
    """The plate size does not follow the data: check must analyse all data."""
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    x_prev = jnp.concatenate([jnp.zeros(1), x[:-1]])
    with numpyro.plate("data", num_data):
        z = numpyro.sample("z", dist.Normal(x_prev, 1))
        numpyro.sample("x", dist.Normal(theta + z, 1), obs=x)


def gaussian_process_with_kernel(kernel, x):
    """The kernel matrix is an (N, N) argument: the model cannot be cut to fewer data."""
    noise = numpyro.sample("noise", dist.HalfNormal(1))
    f = numpyro.sample("f", dist.MultivariateNormal(jnp.zeros(x.shape[0]), kernel))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(f, noise), obs=x)


def test_model_that_cannot_be_shrunk_is_analysed_on_all_data():
    x = RNG.normal(size=400).astype(np.float32)
    report = avi.check(saw_fixed_size, x, 400)
    assert_report(report, "expanded-domain", (-1, 0))
    assert "all data" in report.explanation


def test_dense_gaussian_process_analysed_on_all_data():
    t = np.linspace(0, 10, 40)
    kernel = np.exp(-0.5 * (t[:, None] - t[None, :]) ** 2) + 0.1 * np.eye(40)
    report = avi.check(gaussian_process_with_kernel, kernel, X[:40])
    assert_report(report, "not-amortizable", None)
    assert "'f' is coupled" in report.explanation and "all data" in report.explanation


# ---------------------------------------------------------------- local latents and inputs


def test_per_datum_latent_outside_the_plate_with_independent_coordinates():
    """One event over all data, but no mixed partial between data: still simple hierarchical."""

    def independent_event(x):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([x.shape[0]]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    report = avi.check(independent_event, X)
    assert_report(report, "simple-hierarchical", (0,))
    assert "outside the plate" in report.explanation


def test_model_without_local_latents():
    def regression(c, y):
        beta = numpyro.sample("beta", dist.Normal(0, 1))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(beta * c, 1), obs=y)

    report = avi.check(regression, X, X)
    assert_report(report, "simple-hierarchical", (0,))
    assert "no local latent" in report.explanation


def test_data_given_as_keyword():
    def saw_keywords(*, x):
        saw(x)

    assert_report(avi.check(saw_keywords, x=X), "expanded-domain", (-1, 0))


# ---------------------------------------------------------------------------------- errors


def saw_numpy(x):
    """The saw model built with numpy on its argument: JAX cannot trace it."""
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    x_prev = np.concatenate([np.zeros(1), np.asarray(x)[:-1]])
    with numpyro.plate("data", len(x)):
        z = numpyro.sample("z", dist.Normal(x_prev, 1))
        numpyro.sample("x", dist.Normal(theta + z, 1), obs=x)


def test_model_that_jax_cannot_trace_is_named():
    with pytest.raises(avi.ModelError, match="jax.numpy, not numpy"):
        avi.check(saw_numpy, X)


def test_errors_are_those_of_the_model_tracer():
    def no_plate(x):
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        numpyro.sample("x", dist.Normal(mu, 1).expand([x.shape[0]]).to_event(1), obs=x)

    with pytest.raises(avi.ModelError, match="no numpyro.plate"):
        avi.check(no_plate, X)
    with pytest.raises(avi.ModelError, match="plate='c' is not a plate"):
        avi.check(saw, X, plate="c")
