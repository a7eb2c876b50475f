"""avi.check on integer data used as values (counts as covariates, lags of counts, summaries of
counts), written as a user writes them (issue 12, item 3).

An integer argument the model runs on as float64 indexes nothing: it is differentiated like real
data (lags of any length, summaries) and still swapped near each probe (a threshold on counts,
which derivatives miss); a permutation of the data beyond the window on all data then confirms
the window. An integer array used to gather (groups) stays discrete.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avi

RNG = np.random.default_rng(21)
N = 400


def counts(size: int = N) -> np.ndarray:
    return RNG.poisson(3, size)


def normal(size: int = N) -> np.ndarray:
    return RNG.normal(size=size).astype(np.float32)


def assert_report(report, verdict, inputs):
    assert (report.verdict, report.inputs) == (verdict, inputs), report.explanation


def lagged_counts(c, y, lag):
    b = numpyro.sample("b", dist.Normal(0, 1))
    prev = jnp.pad(c, (lag, 0))[: c.shape[0]]
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(b * jnp.log1p(prev), 1))
        numpyro.sample("y", dist.Normal(z, 1), obs=y)


@settings(max_examples=3, deadline=None)
@given(st.integers(16, 150))
def test_a_long_lag_of_counts_is_an_expanded_domain(lag):
    report = avi.check(lagged_counts, counts(), normal(), lag)
    assert_report(report, "expanded-domain", (-lag, 0))
    assert report.verified_data == N


def test_a_summary_of_counts_is_a_global_influence():
    def centred(c, y):
        b = numpyro.sample("b", dist.Normal(0, 1))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(b * (c - c.mean()), 1))
            numpyro.sample("y", dist.Normal(z, 1), obs=y)

    report = avi.check(centred, counts(), normal())
    assert_report(report, "simple-hierarchical", (0,))
    assert report.summaries == ("argument 'c'",)


@pytest.mark.parametrize("lag", [5, 40])
def test_a_threshold_on_lagged_counts_is_never_simple(lag):
    """Derivatives of a threshold are zero: the swaps (near) and the permutation (far) see it."""

    def thresholded(c, y):
        prev = jnp.pad(c, (lag, 0))[: c.shape[0]]
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.where(prev > 3, 1.0, 0.0), 1))
            numpyro.sample("y", dist.Normal(z, 1), obs=y)

    report = avi.check(thresholded, counts(), normal())
    assert report.verdict != "simple-hierarchical", report.explanation
    assert report.inputs in (None, (-lag, 0)), report.explanation


def test_groups_used_to_gather_stay_discrete_and_simple():
    def grouped(g, y):
        a = numpyro.sample("a", dist.Normal(0, 1).expand([5]).to_event(1))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(a[g], 1))
            numpyro.sample("y", dist.Normal(z, 1), obs=y)

    assert_report(avi.check(grouped, RNG.integers(0, 5, N), normal()), "simple-hierarchical", (0,))


def test_poisson_counts_with_a_count_covariate_stay_simple():
    def poisson(c, y):
        b = numpyro.sample("b", dist.Normal(0, 1))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(0, 1))
            numpyro.sample("y", dist.Poisson(jnp.exp(z + b * jnp.log1p(c))), obs=y)

    assert_report(avi.check(poisson, counts(), counts()), "simple-hierarchical", (0,))
