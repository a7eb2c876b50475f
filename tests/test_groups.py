"""Grouped data (avi.data.groups): one latent per group, the observations in another plate.

The reference is a conjugate model whose exact posterior is Gaussian: normal group means a_j
with known variances around a global mean mu. Its exact posterior precision Lambda over
(mu, a) is known in closed form; the mean-field optimum has the exact posterior means and the
variances 1 / Lambda_ii (the Gaussian mean-field fixed point), which factorized and amortized
fits must reach. A new group's CAVI factor given q(mu) has mean (n ybar / sigma^2 + E[mu] /
tau^2) / (n / sigma^2 + 1 / tau^2) and variance 1 / (n / sigma^2 + 1 / tau^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi
from avi.data.groups import ROW_MASK, GroupedModel, find_groups, group_data, regroup
from avi.data.rows import slice_arguments
from avi.families.encoders import MLP
from avi.model import trace_model
from avi.model.log_joint import log_joint

SIGMA, TAU, PRIOR = 1.0, 0.7, 10.0


def means(group, num_groups, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR))
    with numpyro.plate("groups", num_groups):
        a = numpyro.sample("a", dist.Normal(mu, TAU))
    with numpyro.plate("obs", group.shape[0]):
        numpyro.sample("y", dist.Normal(a[group], SIGMA), obs=y)


def simulate(seed: int, num_groups: int, max_size: int = 30):
    """Groups of 1..max_size observations, rows shuffled (a user's data are not sorted)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, num_groups)
    a = 0.5 + TAU * rng.normal(size=num_groups)
    group = np.repeat(np.arange(num_groups), sizes)
    group = group[rng.permutation(len(group))].astype(np.int32)
    y = (a[group] + SIGMA * rng.normal(size=len(group))).astype(np.float32)
    return group, y


def mean_field(group, y, num_groups):
    """Means and sds of the mean-field optimum of q(mu) prod_j q(a_j) (module docstring)."""
    n = np.bincount(group, minlength=num_groups)
    total = np.bincount(group, weights=y, minlength=num_groups)
    precision = np.zeros((num_groups + 1, num_groups + 1))
    precision[0, 0] = 1 / PRIOR**2 + num_groups / TAU**2
    precision[0, 1:] = precision[1:, 0] = -1 / TAU**2
    precision[1:, 1:] = np.diag(n / SIGMA**2 + 1 / TAU**2)
    shift = np.r_[0.0, total / SIGMA**2]
    return np.linalg.solve(precision, shift), 1 / np.sqrt(np.diag(precision))


J = 200
GROUP, Y = simulate(0, J)
EXACT_MEAN, EXACT_SD = mean_field(GROUP, Y, J)


@pytest.fixture(scope="module")
def amortized_fit():
    return avi.fit(means, GROUP, J, y=Y, family=avi.Amortized(MLP(32)), progress=False)


def assert_matches_mean_field(fit, mean_tol, sd_tol):
    post = fit.posterior()
    z_mu = (float(post["mu"].loc) - EXACT_MEAN[0]) / EXACT_SD[0]
    z_a = (np.asarray(post["a"].loc) - EXACT_MEAN[1:]) / EXACT_SD[1:]
    ratio = np.r_[float(post["mu"].scale) / EXACT_SD[0], np.asarray(post["a"].scale) / EXACT_SD[1:]]
    assert abs(z_mu) < mean_tol and np.abs(z_a).max() < mean_tol, (z_mu, np.abs(z_a).max())
    assert np.abs(ratio - 1).max() < sd_tol, (ratio.min(), ratio.max())


def test_factorized_fit_of_groups_reaches_the_mean_field_optimum():
    """Certified F-VI: means within 0.1 posterior sd (measured 0.006), sds within 5% (0.3%)."""
    fit = avi.fit(means, GROUP, J, y=Y, family="factorized", progress=False)
    assert fit.converged
    assert fit.traced.layout.plate == "groups" and fit.traced.layout.num_data == J
    assert_matches_mean_field(fit, 0.1, 0.05)


def test_amortized_set_encoder_reaches_the_mean_field_optimum(amortized_fit):
    """Simple hierarchical (Theorem 3.4): a set encoder of each group's rows can be ideal. Its
    residual error is the network's: means within 0.3 sd (measured 0.10), sds within 10%
    (2.6%)."""
    assert amortized_fit.converged
    assert_matches_mean_field(amortized_fit, 0.3, 0.10)


def test_new_groups_in_one_encoder_pass(amortized_fit):
    """k new groups, ids 0..k-1 and k as the group count: their CAVI factors given q(mu),
    within 0.3 sd for groups whose mean lies in the training groups' range. Seed 1 draws one
    group of a single observation at 3.13, beyond the training means' 2.86: the encoder
    extrapolates (1.2 sd off, measured), and reliability counts its input as outside."""
    new_group, new_y = simulate(1, 30)
    post = amortized_fit.posterior(new_group, 30, y=new_y)
    n = np.bincount(new_group, minlength=30)
    total = np.bincount(new_group, weights=new_y, minlength=30)
    precision = n / SIGMA**2 + 1 / TAU**2
    mean = (total / SIGMA**2 + float(post["mu"].loc) / TAU**2) / precision
    sd = 1 / np.sqrt(precision)
    seen = np.bincount(GROUP, weights=Y) / np.bincount(GROUP)
    inside = (total / n >= seen.min()) & (total / n <= seen.max())
    assert inside.sum() == 29
    z = (np.asarray(post["a"].loc) - mean) / sd
    assert np.abs(z[inside]).max() < 0.3, np.abs(z[inside]).max()
    assert np.abs(np.asarray(post["a"].scale) / sd - 1).max() < 0.1
    flags = avi.reliability(amortized_fit, new_group, 30, y=new_y)
    assert flags.gain.shape == (30,)
    assert (flags.outside > 0)[~inside].all()


def test_minibatches_of_groups_estimate_the_log_joint_without_bias():
    """E over batches of B groups drawn with replacement of the scaled log joint is the full
    log joint: a z-test over 400 batches."""
    model, args, kwargs, plate = group_data(means, (GROUP, J), {"y": Y})
    layout = trace_model(model, args, kwargs, plate).layout
    theta = jnp.array([0.3])
    z = jax.random.normal(jax.random.PRNGKey(0), (J, 1))
    full = float(log_joint(model, layout, args, kwargs, theta, z))
    rng = np.random.default_rng(0)
    values = []
    for _ in range(400):
        index = jnp.asarray(rng.integers(0, J, 16))
        batch_args, batch_kwargs = slice_arguments(layout, args, kwargs, index)
        values.append(float(log_joint(model, layout, batch_args, batch_kwargs, theta, z[index])))
    stderr = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values) - full) < 4 * stderr, (np.mean(values), full, stderr)


def test_full_batch_log_joint_is_the_users_model():
    model, args, kwargs, plate = group_data(means, (GROUP, J), {"y": Y})
    layout = trace_model(model, args, kwargs, plate).layout
    theta = jnp.array([0.3])
    z = jax.random.normal(jax.random.PRNGKey(0), (J, 1))
    ours = log_joint(model, layout, args, kwargs, theta, z)
    theirs, _ = numpyro.infer.util.log_density(
        means, (GROUP, J), {"y": Y}, {"mu": theta[0], "a": z[:, 0]}
    )
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_regroup_sorts_pads_and_masks():
    group = np.array([2, 0, 2, 2, 0], np.int32)
    y = np.arange(5.0, dtype=np.float32)
    spec = find_groups(means, (group, 4), {"y": y})
    args, kwargs = regroup(means, spec, (group, 4), {"y": y})
    np.testing.assert_array_equal(kwargs[ROW_MASK], [[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    padded = kwargs["y"]
    np.testing.assert_array_equal(padded[0, :2], [1, 4])  # group order kept
    np.testing.assert_array_equal(padded[2], [0, 2, 3])
    assert padded[0, 2] == 1  # padding copies the group's first row
    with pytest.raises(avi.ModelError, match="values in \\[0, 4\\].*3 groups"):
        regroup(means, spec, (np.array([0, 4]), 3), {"y": y[:2]})


def test_set_encoder_ignores_order_and_padding():
    start = {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2)}
    encoder = MLP(8).build_set(jax.random.PRNGKey(0), 3, start)
    rows = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    mask = jnp.array([1.0, 1, 1, 0, 0])
    out = encoder(rows, mask)
    shuffled = encoder(rows[jnp.array([2, 0, 1, 4, 3])], mask[jnp.array([2, 0, 1, 4, 3])])
    trimmed = encoder(rows[:3], mask[:3])
    for a, b, c in zip(out, shuffled, trimmed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], encoder(rows[:2], mask[:2])[0])  # the count matters


def radon_like(county, floor, num_counties, y=None):
    """An integer covariate (floor, 0/1) also indexes the county plate's range."""
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    b = numpyro.sample("b", dist.Normal(0, 1))
    with numpyro.plate("county", num_counties):
        a = numpyro.sample("a", dist.Normal(mu, 1))
    with numpyro.plate("house", county.shape[0]):
        numpyro.sample("y", dist.Normal(a[county] + b * floor, 1), obs=y)


RNG = np.random.default_rng(3)
COUNTY = RNG.integers(0, 12, 150).astype(np.int32)
FLOOR = RNG.integers(0, 2, 150).astype(np.int32)
RADON_Y = RNG.normal(size=150).astype(np.float32)


def test_the_index_is_told_from_an_integer_covariate_by_the_dependence():
    spec = find_groups(radon_like, (COUNTY, FLOOR, 12), {"y": RADON_Y})
    assert (spec.group_plate, spec.observation_plate, spec.index_name) == (
        "county",
        "house",
        "county",
    )
    assert find_groups(radon_like, (COUNTY, FLOOR, 12), {"y": RADON_Y}, groups="county") == spec
    with pytest.raises(avi.ModelError, match="groups='floor'"):
        find_groups(radon_like, (COUNTY, FLOOR, 12), {"y": RADON_Y}, groups="floor")


def test_ordinary_models_are_not_grouped():
    def ordinary(x):
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    assert find_groups(ordinary, (RADON_Y,), {}) is None
    model, *_ = group_data(ordinary, (RADON_Y,), {})
    assert model is ordinary


def test_crossed_groups_are_refused():
    region = RNG.integers(0, 5, 150).astype(np.int32)

    def crossed(county, region, y=None):
        with numpyro.plate("county", 12):
            a = numpyro.sample("a", dist.Normal(0, 1))
        with numpyro.plate("region", 5):
            r = numpyro.sample("r", dist.Normal(0, 1))
        with numpyro.plate("house", county.shape[0]):
            numpyro.sample("y", dist.Normal(a[county] + r[region], 1), obs=y)

    with pytest.raises(avi.ModelError, match="crossed or nested groups"):
        avi.fit(crossed, COUNTY, region, y=RADON_Y, progress=False)


def test_neighbouring_groups_are_not_groups():
    """Observations that reach another group's latent (a[county] + a[county - 1]) are not a
    grouped model: without groups= the county latents stay globals; with it, refused."""

    def neighbours(county, y=None):
        with numpyro.plate("county", 12):
            a = numpyro.sample("a", dist.Normal(0, 1))
        with numpyro.plate("house", county.shape[0]):
            numpyro.sample("y", dist.Normal(a[county] + a[county - 1], 1), obs=y)

    assert find_groups(neighbours, (COUNTY,), {"y": RADON_Y}) is None
    with pytest.raises(avi.ModelError, match="depends only on its own group"):
        avi.fit(neighbours, COUNTY, y=RADON_Y, groups="county", progress=False)


def test_grouped_fit_in_minibatches_of_groups():
    fit = avi.fit(
        means, GROUP, J, y=Y, family=avi.Amortized(MLP(16)), batch_size=50, progress=False,
        num_steps=300,
    )
    assert isinstance(fit.traced.model, GroupedModel)
    assert np.isfinite(fit.elbo().mean)
    assert fit.posterior()["a"].loc.shape == (J,)


def test_window_inputs_are_refused_for_groups():
    with pytest.raises(avi.FamilyError, match="groups, which have no order"):
        avi.fit(means, GROUP, J, y=Y, family=avi.Amortized(MLP(4), inputs=avi.Window((-1, 0))),
                progress=False, num_steps=10)


def test_a_saved_grouped_fit_infers_new_groups_as_before(amortized_fit, tmp_path):
    new_group, new_y = simulate(2, 12)
    before = amortized_fit.posterior(new_group, 12, y=new_y)["a"]
    amortized_fit.save(tmp_path / "fit")
    loaded = avi.load(tmp_path / "fit", means)
    after = loaded.posterior(new_group, 12, y=new_y)["a"]
    np.testing.assert_allclose(np.asarray(after.loc), np.asarray(before.loc), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(after.scale), np.asarray(before.scale), rtol=1e-6)


def test_draws_and_arviz_of_a_grouped_fit(amortized_fit):
    draws = amortized_fit.sample(50)
    assert draws["a"].shape == (50, J) and draws["mu"].shape == (50,)
    idata = amortized_fit.to_arviz()
    assert idata.posterior["a"].shape[-1] == J


def test_constant_family_on_groups():
    fit = avi.fit(means, GROUP, J, y=Y, family="constant", num_steps=50, progress=False)
    scales = np.asarray(fit.posterior()["a"].scale)
    assert scales.shape == (J,) and np.allclose(scales, scales[0])


def test_group_level_covariates_reach_the_set_encoder():
    """A per-county covariate (length J) is a per-group argument: sliced with the groups'
    minibatches and given to the set encoder on every row of its group."""
    uranium = np.linspace(-1, 1, 12).astype(np.float32)

    def with_uranium(county, floor, u, y=None):
        g = numpyro.sample("g", dist.Normal(0, 1))
        with numpyro.plate("county", u.shape[0]):
            a = numpyro.sample("a", dist.Normal(g * u, 1))
        with numpyro.plate("house", county.shape[0]):
            numpyro.sample("y", dist.Normal(a[county] + 0.5 * floor, 1), obs=y)

    fit = avi.fit(with_uranium, COUNTY, FLOOR.astype(np.float32), uranium, y=RADON_Y,
                  family=avi.Amortized(MLP(8), given_globals=True), num_steps=30, progress=False)
    features = fit.problem.local_data.features
    assert features.shape[0] == 12 and features.shape[-1] == 1 + 3  # mask, floor, y, u
    u_channel = np.asarray(features[..., 3])
    assert np.allclose(u_channel, u_channel[:, :1])  # constant within a group
    assert np.isfinite(fit.elbo().mean)


def test_latents_per_observation_are_not_groups():
    def house_effects(county, y=None):
        with numpyro.plate("county", 12):
            a = numpyro.sample("a", dist.Normal(0, 1))
        with numpyro.plate("house", county.shape[0]):
            e = numpyro.sample("e", dist.Normal(0, 0.3))
            numpyro.sample("y", dist.Normal(a[county] + e, 1), obs=y)

    assert find_groups(house_effects, (COUNTY,), {"y": RADON_Y}) is None
    with pytest.raises(avi.ModelError, match="nested locals"):
        find_groups(house_effects, (COUNTY,), {"y": RADON_Y}, groups="county")
