"""avi.check on problems larger than its element budget: analysed on the first k data, verified
on all N, and never called amortizable on the first k alone (issue 12, item 2).

What the first k data show (a window K, symmetric summaries) is tested on the whole problem at
data spread over the range: permuting the data outside each one's window must leave its optimal
factor unchanged, exchanging disjoint windows must exchange the factors. A model whose
dependence changes past the k-th datum (a lag longer than k, a regime past some index) is
"not-amortizable", and so is any model when the whole problem is too large to evaluate: the
explanation then says "not verified beyond k data". Most tests lower the budget so that a model
of a few thousand data is cut (fast); one uses the real budget.
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
import avi.structure.beyond as beyond
import avi.structure.problem as problem

RNG = np.random.default_rng(7)
N, D = 3000, 8


@pytest.fixture
def small_budget(monkeypatch):
    """Cut any problem of more than 4,000 elements: N x D = 24,000 keeps about the first 300."""
    monkeypatch.setattr(problem, "ELEMENT_BUDGET", 4_000)
    monkeypatch.setattr(problem, "MIN_SIZE", 64)


def features(size: int = N, width: int = D) -> np.ndarray:
    return RNG.normal(size=(size, width)).astype(np.float32)


def wide(x, lag=0, late=None, summary=False):
    """z_n in R^D ~ N(mu + 0.5 x_{n-lag} [+ 1 past index ``late``] [- mean x], I), x_n ~ N(z_n, I)."""
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    size = x.shape[0]
    loc = mu + (0.5 * jnp.pad(x, ((lag, 0), (0, 0)))[:size] if lag else 0.0)
    if late is not None:
        loc = loc + jnp.where(jnp.arange(size) > late, 1.0, 0.0)[:, None]
    if summary:
        loc = loc - x.mean(axis=0)
    with numpyro.plate("data", size):
        z = numpyro.sample("z", dist.Normal(loc, 1).expand([size, x.shape[1]]).to_event(1))
        numpyro.sample("x", dist.Normal(z, 1).to_event(1), obs=x)


def assert_report(report, verdict, inputs, verified):
    assert (report.verdict, report.inputs, report.verified_data) == (verdict, inputs, verified), (
        report.explanation
    )


def test_a_cut_simple_model_is_verified_on_all_data(small_budget):
    report = avi.check(wide, features())
    assert_report(report, "simple-hierarchical", (0,), N)
    assert "analysed on its first" in report.explanation
    assert f"verified on all {N}" in report.explanation


@pytest.mark.parametrize("lag", [1, 7, 40])
def test_a_short_lag_is_verified_on_all_data(small_budget, lag):
    report = avi.check(wide, features(), lag)
    assert_report(report, "expanded-domain", (-lag, 0), N)


def test_a_summary_and_a_lag_are_verified(small_budget):
    report = avi.check(wide, features(), 3, None, True)
    assert_report(report, "expanded-domain", (-3, 0), N)
    assert report.summaries == ("argument 'x'",)


@settings(max_examples=3, deadline=None)
@given(st.integers(400, 2900))
def test_a_lag_longer_than_the_analysed_prefix_is_never_amortizable(lag):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(problem, "ELEMENT_BUDGET", 4_000)
        patch.setattr(problem, "MIN_SIZE", 64)
        report = avi.check(wide, features(), lag)
    k = report.verified_data
    assert k < N
    assert_report(report, "not-amortizable", None, k)
    assert f"not verified beyond {k} data" in report.explanation


@settings(max_examples=3, deadline=None)
@given(st.integers(400, 2900))
def test_a_regime_past_the_prefix_is_never_amortizable(late):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(problem, "ELEMENT_BUDGET", 4_000)
        patch.setattr(problem, "MIN_SIZE", 64)
        report = avi.check(wide, features(), 0, late)
    assert report.verdict == "not-amortizable", report.explanation
    assert "not verified beyond" in report.explanation or "position" in report.explanation


def test_a_coupling_past_the_prefix_is_never_amortizable(small_budget):
    def linked_late(x):
        """An HMM-like factor linking z_n to z_{n-1}, only past datum 2000."""
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1).expand([x.shape[0], D]).to_event(1))
            numpyro.sample("x", dist.Normal(z, 1).to_event(1), obs=x)
        step = jnp.where(jnp.arange(1, x.shape[0]) > 2000, 1.0, 0.0)[:, None]
        numpyro.factor("link", -0.5 * jnp.sum(step * (z[1:] - z[:-1]) ** 2))

    report = avi.check(linked_late, features())
    assert report.verdict == "not-amortizable", report.explanation
    assert f"not verified beyond {report.verified_data} data" in report.explanation


def test_a_whole_problem_too_large_to_evaluate_is_not_called_amortizable(
    small_budget, monkeypatch
):
    monkeypatch.setattr(beyond, "VERIFY_BUDGET", 10_000)
    report = avi.check(wide, features())
    k = report.verified_data
    assert_report(report, "not-amortizable", None, k)
    assert k < N and f"not verified beyond {k} data" in report.explanation
    assert "simple hierarchical" in report.explanation  # what the first k data showed


def test_the_real_budget_cuts_a_wide_model_and_verifies_it():
    """N x D = 2,200,000 elements, above the 2,000,000 budget."""
    x = features(11_000, 200)
    report = avi.check(wide, x, 2)
    assert "analysed on its first" in report.explanation
    assert_report(report, "expanded-domain", (-2, 0), 11_000)


def test_an_uncut_problem_is_verified_on_all_its_data():
    report = avi.check(wide, features(200, 3))
    assert_report(report, "simple-hierarchical", (0,), 200)
