"""avi.check on models written the way a new user writes them, none seen by the other tests.

Each model's verdict follows from the paper's theory: anything computed from the index inside
the model (a covariate t = n / N, a changepoint, index weights in a factor, a cumsum of ones)
breaks exchangeability (Definition 3.3) and no function of the data alone is ideal; fixed lags
of any length give the window they reach (the saw model's expanded domain); a global summary of
the data (median, sd, max, a sum of squares) is the same for every datum, a global influence;
a latent in a county plate whose houses live in another plate is a group latent whose datum is
its county's houses (grouped data); and plainly simple hierarchical models in unusual writing stay simple
hierarchical (Theorem 3.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi

RADON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "radon_mn.json"


def normal(size: int, stream: int = 0) -> np.ndarray:
    return np.random.default_rng([size, stream, 7]).normal(size=size).astype(np.float32)


def assert_report(report, verdict, inputs):
    assert (report.verdict, report.inputs) == (verdict, inputs), report.explanation


# --- position dependence written in new ways --------------------------------------------------


def time_covariate(x):
    b = numpyro.sample("b", dist.Normal(0, 1))
    N = x.shape[0]
    t = jnp.arange(N) / N
    with numpyro.plate("obs", N):
        z = numpyro.sample("z", dist.Normal(b * t, 1.0))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=x)


def changepoint(x):
    m1 = numpyro.sample("m1", dist.Normal(0, 1))
    m2 = numpyro.sample("m2", dist.Normal(0, 1))
    loc = jnp.where(jnp.arange(x.shape[0]) < 37, m1, m2)
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(loc, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def factor_weights(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
    weights = 1.0 + jnp.log1p(jnp.arange(x.shape[0]))
    numpyro.factor("tilt", -0.5 * jnp.sum(weights * z**2))


def cumsum_index(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    k = jnp.cumsum(jnp.ones(x.shape[0]))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, jnp.sqrt(k)))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def reversed_partner(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu + 0.5 * x[::-1], 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def disguised_trend(x):
    s = numpyro.sample("s", dist.HalfNormal(1))
    z = numpyro.sample("z", dist.Normal(0.02 * jnp.arange(x.shape[0]), s).to_event(1))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize(
    "model, size",
    [
        (time_covariate, 300),
        (changepoint, 120),
        (factor_weights, 200),
        (cumsum_index, 150),
        (reversed_partner, 100),
        (disguised_trend, 200),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_position_dependence_is_not_amortizable(model, size):
    report = avi.check(model, normal(size))
    assert_report(report, "not-amortizable", None)
    if model is not reversed_partner:  # a partner at N - 1 - n: position, or a dense reach
        assert "position" in report.explanation


def test_the_time_covariate_passed_as_an_argument_is_simple_hierarchical():
    def time_passed(x, t):
        b = numpyro.sample("b", dist.Normal(0, 1))
        with numpyro.plate("obs", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(b * t, 1.0))
            numpyro.sample("x", dist.Normal(z, 0.5), obs=x)

    assert_report(avi.check(time_passed, normal(200), np.arange(200) / 200),
                  "simple-hierarchical", (0,))


# --- fixed lags -------------------------------------------------------------------------------


def lag_k(x, k):
    s = numpyro.sample("s", dist.HalfNormal(1))
    prev = jnp.concatenate([jnp.zeros(k), x[:-k]])
    with numpyro.plate("t", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.5 * prev, s))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("lag, size", [(7, 50), (25, 400)])
def test_fixed_lags(lag, size):
    assert_report(avi.check(lag_k, normal(size), lag), "expanded-domain", (-lag, 0))


def test_a_lag_back_and_a_lead_forward():
    def back_and_forward(x):
        th = numpyro.sample("th", dist.Normal(0, 1))
        prev = jnp.pad(x[:-1], (1, 0))
        nxt = jnp.pad(x[2:], (0, 2))
        with numpyro.plate("t", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(th + 0.3 * prev - 0.2 * nxt, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    assert_report(avi.check(back_and_forward, normal(300)), "expanded-domain", (-1, 0, 2))


def test_a_lag_by_gathering_clipped_indices():
    def gathered(x):
        prev = x[jnp.maximum(jnp.arange(x.shape[0]) - 5, 0)]
        with numpyro.plate("obs", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.5 * prev, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    assert_report(avi.check(gathered, normal(200)), "expanded-domain", (-5, 0))


# --- global summaries in priors ---------------------------------------------------------------


def median_prior(x):
    b = numpyro.sample("b", dist.Normal(0, 1))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(b * jnp.median(x), 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def std_prior(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 0.5 + jnp.std(x)))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def max_prior(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu + 0.1 * jnp.max(x), 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize(
    "model, size, stream",
    # the median's datum lies within a probe's exclusion radius for N = 301 (it was called
    # dense); the others spread it over the range and odd and even N
    [(median_prior, 301, 0), (std_prior, 400, 0), (max_prior, 60, 5)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_summaries_of_the_data_are_a_global_influence(model, size, stream):
    report = avi.check(model, normal(size, stream))
    assert_report(report, "simple-hierarchical", (0,))
    assert report.summaries == ("argument 'x'",)
    assert avi.structure.minibatch_refusal(report) is not None


def test_a_covariate_scaled_by_its_root_mean_square():
    def scaled(c, y):
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        rms = jnp.sqrt(jnp.sum(c**2) / c.shape[0])
        with numpyro.plate("obs", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu + c / rms, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    report = avi.check(scaled, normal(400, 1), normal(400))
    assert_report(report, "simple-hierarchical", (0,))
    assert report.summaries == ("argument 'c'",)


def test_a_quantile_with_a_lag_gives_the_lag():
    def quantile_lag(x):
        prev = jnp.pad(x[:-3], (3, 0))
        with numpyro.plate("obs", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.5 * prev + jnp.quantile(x, 0.9), 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    report = avi.check(quantile_lag, normal(333, 5))
    assert_report(report, "expanded-domain", (-3, 0))
    assert report.summaries == ("argument 'x'",)


def tiny_centred(x):
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.mean(x), 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def tiny_lag_and_sd(x):
    prev = jnp.pad(x[:-1], (1, 0))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(prev + jnp.std(x), 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def tiny_smoother(x):
    t = jnp.arange(x.shape[0]) * 1.0
    w = jnp.exp(-0.5 * (t[:, None] - t[None]) ** 2 / 9.0)
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(w @ x / w.sum(1), 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize(
    "model, size, verdict, inputs",
    # at most 16 data every datum is probed: no column lies far from every probe, and the
    # summary was read as a dense dependence (a span of half the series)
    [(tiny_centred, 12, "simple-hierarchical", (0,)),
     (median_prior, 8, "simple-hierarchical", (0,)),
     (tiny_lag_and_sd, 16, "expanded-domain", (-1, 0)),
     (tiny_smoother, 12, "not-amortizable", None)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_summaries_on_tiny_data_sets(model, size, verdict, inputs):
    report = avi.check(model, normal(size))
    assert_report(report, verdict, inputs)
    assert bool(report.summaries) == (verdict != "not-amortizable")


# --- local latents without data of their own --------------------------------------------------


def test_a_per_datum_latent_only_in_a_prior_is_dataless():
    def gamma_scales(x):
        tau = numpyro.sample("tau", dist.Gamma(2.0, 2.0))
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("lam", dist.Gamma(2.0, tau))
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    report = avi.check(gamma_scales, normal(100))
    assert_report(report, "simple-hierarchical", (0,))
    assert report.dataless == ("lam",)


def test_a_latent_reaching_its_datum_through_another_local_is_not_dataless():
    """w_n enters only the prior of z_n, but q*(w_n) depends on q*(z_n) (Lemma 3.1), hence on
    x_n: calling it dataless would advise a constant factor that cannot close the gap."""

    def chained(x):
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("obs", x.shape[0]):
            w = numpyro.sample("w", dist.Normal(mu, 1.0))
            z = numpyro.sample("z", dist.Normal(w, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    report = avi.check(chained, normal(200))
    assert_report(report, "simple-hierarchical", (0,))
    assert report.dataless == ()
    assert "'w' depends on the data only through 'z' of the same datum" in report.explanation
    assert "no data at all" not in report.explanation


# --- radon: county latents, house observations ------------------------------------------------


@pytest.fixture(scope="module")
def radon_data():
    d = json.loads(RADON.read_text())
    return (np.asarray(d["county_idx"]) - 1, np.asarray(d["floor_measure"], np.float64),
            np.asarray(d["log_uppm"], np.float64), np.asarray(d["log_radon"], np.float64),
            d["J"])


def radon_non_centred(county_idx, floor, uppm, log_radon, J):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    sa = numpyro.sample("sa", dist.HalfNormal(1))
    g = numpyro.sample("g", dist.Normal(0, 1))
    b = numpyro.sample("b", dist.Normal(0, 1))
    s = numpyro.sample("s", dist.HalfNormal(1))
    with numpyro.plate("county", J):
        a_raw = numpyro.sample("a_raw", dist.Normal(0, 1))
    a = mu + sa * a_raw
    with numpyro.plate("house", log_radon.shape[0]):
        numpyro.sample("y", dist.Normal(a[county_idx] + g * uppm + b * floor, s), obs=log_radon)


def test_radon_county_latents_are_the_groups_of_their_houses(radon_data):
    """The county intercepts are locals of the county plate whose data are each county's
    houses (grouped data): simple hierarchical, with or without plate='county'."""
    for plate in (None, "county"):
        report = avi.check(radon_non_centred, *radon_data, plate=plate)
        assert_report(report, "simple-hierarchical", (0,))
        assert "Grouped data: plate 'county' holds J = 85 groups" in report.explanation
        assert "through 'county_idx'" in report.explanation


def test_check_leaves_the_users_index_array_usable_outside_x64(radon_data):
    """check's program, traced in x64 mode, held the user's int64 county index as a constant;
    JAX then treated that very array as 64-bit afterwards: the user's next gather with it (and
    the next avi.check of a model using it) failed with 'lax.add requires arguments to have the
    same dtypes, got int64, int32'."""
    county_idx, J = radon_data[0], radon_data[-1]
    avi.check(radon_non_centred, *radon_data, plate="county")
    assert jnp.zeros(J)[county_idx].shape == county_idx.shape
    assert not jax.config.jax_enable_x64 or jnp.zeros(J)[county_idx].dtype == jnp.float64


def test_radon_with_house_effects(radon_data):
    def house_effects(county_idx, floor, uppm, log_radon, J):
        mu = numpyro.sample("mu", dist.Normal(0, 5))
        sa = numpyro.sample("sa", dist.HalfNormal(1))
        b = numpyro.sample("b", dist.Normal(0, 1))
        sh = numpyro.sample("sh", dist.HalfNormal(1))
        with numpyro.plate("county", J):
            a = numpyro.sample("a", dist.Normal(mu, sa))
        with numpyro.plate("house", log_radon.shape[0]):
            e = numpyro.sample("e", dist.Normal(0, sh))
            numpyro.sample("y", dist.Normal(a[county_idx] + b * floor + e, 0.3), obs=log_radon)

    assert_report(avi.check(house_effects, *radon_data), "simple-hierarchical", (0,))


def test_radon_grouped_by_county_in_a_padded_array(radon_data):
    county, floor, _, log_radon, J = radon_data
    H = np.bincount(county).max()
    y, f, mask = np.zeros((J, H)), np.zeros((J, H)), np.zeros((J, H), bool)
    slot = np.zeros(J, int)
    for c, value, fl in zip(county, log_radon, floor, strict=True):
        y[c, slot[c]], f[c, slot[c]], mask[c, slot[c]] = value, fl, True
        slot[c] += 1

    def padded(y, mask, floor):
        mu = numpyro.sample("mu", dist.Normal(0, 5))
        sa = numpyro.sample("sa", dist.HalfNormal(1))
        b = numpyro.sample("b", dist.Normal(0, 1))
        s = numpyro.sample("s", dist.HalfNormal(1))
        with numpyro.plate("county", y.shape[0], dim=-2):
            a = numpyro.sample("a", dist.Normal(mu, sa))
            with numpyro.plate("house", y.shape[1], dim=-1), numpyro.handlers.mask(mask=mask):
                numpyro.sample("y", dist.Normal(a + b * floor, s), obs=y)

    assert_report(avi.check(padded, y, mask, f), "simple-hierarchical", (0,))


# --- plainly simple hierarchical, unusual writing ---------------------------------------------


def poisson_gamma(y):
    alpha = numpyro.sample("alpha", dist.Gamma(2.0, 1.0))
    beta = numpyro.sample("beta", dist.Gamma(2.0, 1.0))
    with numpyro.plate("units", y.shape[0]):
        lam = numpyro.sample("lam", dist.Gamma(alpha, beta))
        numpyro.sample("y", dist.Poisson(lam), obs=y)


def student_t(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    tau = numpyro.sample("tau", dist.HalfCauchy(1))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    with numpyro.plate("obs", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, tau))
        numpyro.sample("x", dist.StudentT(nu, z, 0.7), obs=x)


def latent_2d(X):
    W = numpyro.sample("W", dist.Normal(0, 1).expand([2, 3]).to_event(2))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([2]).to_event(1))
        numpyro.sample("x", dist.Normal(z @ W, 0.5).to_event(1), obs=X)


def nested_global(X):
    """Per-feature globals, then the data plate with the feature plate entered again inside."""
    with numpyro.plate("feature", X.shape[1]):
        sigma = numpyro.sample("sigma", dist.HalfNormal(1))
        w = numpyro.sample("w", dist.Normal(0, 1))
    with numpyro.plate("obs", X.shape[0], dim=-2):
        z = numpyro.sample("z", dist.Normal(0, 1))
        with numpyro.plate("feature", X.shape[1], dim=-1):
            numpyro.sample("x", dist.Normal(z * w, sigma), obs=X)


def scale_mixture(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("obs", x.shape[0]):
        v = numpyro.sample("v", dist.LogNormal(0, 1))
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, jnp.sqrt(v)), obs=x)


SIMPLE = {
    "poisson-gamma": (poisson_gamma, lambda r: (r.poisson(3.0, 500),)),
    "student-t": (student_t, lambda r: (normal(500),)),
    "2-d locals": (latent_2d, lambda r: (r.normal(size=(400, 3)),)),
    "globals in a feature plate": (nested_global, lambda r: (r.normal(size=(300, 4)),)),
    "scale mixture": (scale_mixture, lambda r: (normal(300),)),
}


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_simple_hierarchical_models_in_unusual_writing(name):
    model, make = SIMPLE[name]
    plate = "obs" if model is nested_global else None  # two plates hold latents and data
    report = avi.check(model, *make(np.random.default_rng(3)), plate=plate)
    assert_report(report, "simple-hierarchical", (0,))
    assert report.summaries == () and report.dataless == ()


# --- state left by NumPyro's MCMC -------------------------------------------------------------


def test_check_after_mcmc_on_float64_data_of_a_constrained_model(capfd):
    from numpyro.infer import MCMC, NUTS

    x = np.random.default_rng(0).normal(size=40)  # float64 NumPy data
    x64 = jax.config.jax_enable_x64
    mcmc = MCMC(NUTS(student_t), num_warmup=10, num_samples=10, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), x)
    capfd.readouterr()
    assert_report(avi.check(student_t, x), "simple-hierarchical", (0,))
    assert_report(avi.check(latent_2d, np.random.default_rng(1).normal(size=(30, 3))),
                  "simple-hierarchical", (0,))
    assert jax.config.jax_enable_x64 == x64
    assert capfd.readouterr().err == ""
