"""Property tests of the input boundary (hypothesis): over dtypes, containers, shapes, families,
encoders, Window offsets and batch sizes, avi either gives results of the right shapes or raises
its own error; its log density equals NumPyro's; its minibatch ELBO is unbiased for the
full-batch ELBO.

Examples are few and derandomized (each fit compiles), so the file runs in about a minute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpyro.infer.util import potential_energy

import avi
from avi.data.boundary import convert_argument
from avi.model import trace_model, unflatten_globals, unflatten_locals
from avi.model.log_joint import log_joint
from avi.vi.elbo import elbo_draws

PROPERTY = settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_]
CONTAINERS = ["numpy", "list", "series", "jax", "dataframe"]


def scale_model(x, y):
    """Constrained sites (a positive global, positive locals) to exercise the Jacobians."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("data", y.shape[0]):
        lam = numpyro.sample("lam", dist.LogNormal(mu + 0.1 * x, sigma))
        numpyro.sample("y", dist.Normal(jnp.log(lam), 1.0), obs=y)


def hierarchical(y):
    theta = numpyro.sample("theta", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(theta, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


def wrap(values: np.ndarray, container: str):
    if container == "list":
        return values.tolist()
    if container == "series":
        return pd.Series(values)
    if container == "jax":
        return jnp.asarray(values)
    if container == "dataframe":
        return pd.DataFrame({"y": values})["y"]
    return values


@PROPERTY
@given(
    dtype=st.sampled_from(DTYPES),
    container=st.sampled_from(CONTAINERS),
    num_data=st.integers(2, 12),
    offset=st.sampled_from([0.0, 1e3, 1e8, 1e39]),
    trailing=st.booleans(),
)
def test_any_array_like_fits_or_gets_an_avi_error(dtype, container, num_data, offset, trailing):
    rng = np.random.default_rng(num_data)
    raw = offset + rng.normal(size=num_data) * 3
    with np.errstate(over="ignore", invalid="ignore"):
        values = raw.astype(dtype)
    if trailing:
        values = values[:, None]
    if container in ("series", "dataframe") and trailing:
        container = "numpy"
    try:
        fit = avi.fit(
            hierarchical, wrap(values, container), family="factorized", num_steps=3,
            progress=False,
        )  # fmt: skip
    except avi.AviError:
        return
    draws = fit.sample(4)
    assert draws["theta"].shape == (4,) and draws["z"].shape == (4, num_data)
    assert np.isfinite(draws["z"]).all()


FAMILIES = {
    "factorized": lambda: avi.Factorized(),
    "constant": lambda: avi.Constant(),
    "mlp": lambda: avi.Amortized(avi.MLP(width=4, depth=1)),
    "poly": lambda: avi.Amortized(avi.Polynomial(1)),
    "window": None,
}


@PROPERTY
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    offsets=st.lists(st.integers(-12, 12), min_size=1, max_size=3, unique=True),
    num_data=st.integers(2, 10),
    batch_size=st.one_of(st.none(), st.integers(-1, 12)),
)
def test_families_windows_and_batch_sizes_fit_or_raise_avis_error(
    family, offsets, num_data, batch_size
):
    rng = np.random.default_rng(0)
    x = rng.normal(size=num_data).astype(np.float32)
    y = (x + rng.normal(size=num_data)).astype(np.float32)
    try:
        chosen = (
            avi.Amortized(avi.MLP(4, depth=1), inputs=avi.Window(tuple(offsets)))
            if family == "window"
            else FAMILIES[family]()
        )
        fit = avi.fit(
            scale_model, x, y, family=chosen, num_steps=3, batch_size=batch_size, progress=False
        )
    except avi.AviError:
        return
    posterior = fit.posterior()
    assert posterior["lam"].batch_shape + posterior["lam"].event_shape == (num_data,)
    draws = fit.sample(3)
    assert draws["lam"].shape == (3, num_data) and (draws["lam"] > 0).all()
    assert draws["sigma"].shape == (3,) and (draws["sigma"] > 0).all()


@PROPERTY
@given(num_data=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_log_density_equals_numpyros(num_data, seed):
    """avi's log joint in unconstrained space (Jacobians included) is NumPyro's -potential."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num_data).astype(np.float32)
    y = rng.normal(size=num_data).astype(np.float32)
    traced = trace_model(scale_model, (x, y), {})
    layout = traced.layout
    theta = jnp.asarray(rng.normal(size=layout.global_dim), jnp.float32)
    z = jnp.asarray(rng.normal(size=(num_data, layout.local_dim)), jnp.float32)
    ours = log_joint(scale_model, layout, (x, y), {}, theta, z)
    unconstrained = {**unflatten_globals(layout, theta), **unflatten_locals(layout, z)}
    numpyros = -potential_energy(scale_model, (x, y), {}, unconstrained)
    np.testing.assert_allclose(float(ours), float(numpyros), rtol=1e-5, atol=1e-4)


@settings(max_examples=2, deadline=None, derandomize=True)
@given(
    num_data=st.integers(6, 40), fraction=st.floats(0.1, 0.9), family=st.sampled_from(["f", "a"])
)
def test_minibatch_elbo_is_unbiased_for_the_full_batch_elbo(num_data, fraction, family):
    """Mean of minibatch estimates == full-data ELBO, within 5 standard errors (z-test on 2,000
    independent draws of each; a false alarm has probability < 1e-6 per example)."""
    batch_size = max(1, min(num_data - 1, round(fraction * num_data)))
    rng = np.random.default_rng(num_data)
    x = rng.normal(size=num_data).astype(np.float32)
    y = (x + rng.normal(size=num_data)).astype(np.float32)
    chosen = avi.Factorized() if family == "f" else avi.Amortized(avi.MLP(4, depth=1))
    algorithm = avi.vi.build(scale_model, x, y, family=chosen, batch_size=batch_size)
    params = algorithm.init(jax.random.PRNGKey(1)).params
    problem = algorithm.problem
    draws = 2000
    full_draws = jax.jit(lambda key: elbo_draws(key, params, problem, None, draws))
    full = np.asarray(full_draws(jax.random.PRNGKey(2)))

    def minibatch(key: jax.Array) -> jax.Array:
        batch_key, draw_key = jax.random.split(key)
        index = algorithm.draw_batch(batch_key).index
        assert index is not None and index.shape == (batch_size,)
        return elbo_draws(draw_key, params, problem, index, 1)[0]

    mini = np.asarray(jax.jit(jax.vmap(minibatch))(jax.random.split(jax.random.PRNGKey(3), draws)))
    stderr = np.sqrt(full.var(ddof=1) / draws + mini.var(ddof=1) / draws)
    assert abs(mini.mean() - full.mean()) < 5 * stderr, (mini.mean(), full.mean(), stderr)


@PROPERTY
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=6),
    container=st.sampled_from(["numpy", "list", "series"]),
)
def test_conversion_raises_only_avis_errors(values, container):
    array = np.asarray(values, dtype=np.float64)
    try:
        converted = convert_argument(wrap(array, container), "argument 0")
    except avi.DataError:
        return
    if container != "list" or len(values):
        assert np.asarray(converted).shape == array.shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_numeric_dtype_passes_unchanged(dtype):
    values = np.arange(6).astype(dtype)
    assert convert_argument(values, "argument 0") is values
