"""The input boundary (avi.data.boundary, and the shape checks of avi.model.trace): every
array-like is converted to the right answer or refused with an avi error naming it."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

import avi
from avi.data.boundary import convert_argument, convert_arguments
from avi.data.stream import is_streamed

FAST = {"num_steps": 5, "progress": False}


def regression(x, y=None):
    """Per-datum covariate x: the posterior of z_n depends on x_n and y_n."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", len(x)):
        z = numpyro.sample("z", dist.Normal(w * x, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


def hierarchical(y):
    theta = numpyro.sample("theta", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(theta, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=30).astype(np.float32)
    return x, (2.0 * x + rng.normal(size=30)).astype(np.float32)


@pytest.fixture(scope="module")
def amortized_fit(data) -> avi.Fit:
    x, y = data
    return avi.fit(regression, x, y, family=avi.Amortized(avi.MLP(8)), **FAST)


# ---- conversion -------------------------------------------------------------------------------


def test_numpy_arrays_pass_without_a_copy():
    x = np.arange(5.0, dtype=np.float32)
    assert convert_argument(x, "argument 0") is x
    x64 = np.random.default_rng(0).normal(size=7)
    assert convert_argument(x64, "argument 0") is x64
    args, kwargs = convert_arguments((x, 3, "name", (2, 3)), {"y": x})
    assert args[0] is x and args[1:] == (3, "name", (2, 3)) and kwargs["y"] is x


def test_conversion_is_idempotent():
    once = convert_argument(pd.Series([1.0, 2.0, 3.0]), "x")
    assert convert_argument(once, "x") is once


def test_memory_maps_stay_memory_mapped(tmp_path: Path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(10.0))
    mapped = np.load(path, mmap_mode="r")
    args, _ = convert_arguments((mapped,), {})
    assert args[0] is mapped and is_streamed(args, {})


@pytest.mark.parametrize(
    "make",
    [lambda x: pd.Series(x), lambda x: list(map(float, x)), lambda x: pd.DataFrame({"x": x})["x"]],
    ids=["series", "list", "dataframe-column"],
)
def test_posterior_of_new_data_uses_the_features_whatever_their_container(
    amortized_fit: avi.Fit, data, make
):
    """The silent wrong answer: a Series or list covariate gave features of y only."""
    x, y = data
    expected = amortized_fit.posterior(x, y)["z"].mean
    got = amortized_fit.posterior(make(x), y)["z"].mean
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)
    moved = amortized_fit.posterior(x + 1.0, y)["z"].mean
    assert not np.allclose(np.asarray(moved), np.asarray(expected))


@pytest.mark.parametrize("kind", ["series", "list", "dataframe", "jax"])
def test_fit_accepts_the_ecosystems_array_likes(data, kind):
    _, y = data
    given = {
        "series": pd.Series(y),
        "list": y.tolist(),
        "dataframe": pd.DataFrame({"y": y})["y"],
        "jax": jnp.asarray(y),
    }[kind]
    fit = avi.fit(hierarchical, given, family="factorized", **FAST)
    reference = avi.fit(hierarchical, y, family="factorized", **FAST)
    np.testing.assert_allclose(fit.params.global_loc, reference.params.global_loc, rtol=1e-5)


def test_a_dataframe_becomes_a_two_dimensional_array():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4]})
    np.testing.assert_array_equal(convert_argument(frame, "x"), [[1.0, 3.0], [2.0, 4.0]])


def test_nullable_pandas_missing_values_are_reported_with_the_masking_fix():
    y = pd.Series([1.0, None, 3.0] * 4, dtype="Float64")
    with pytest.raises(avi.DataError, match=r"argument 0.*non-finite.*mask"):
        avi.fit(hierarchical, y, family="factorized", **FAST)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (np.arange(12.0) + 1j, "complex"),
        (np.array(["1.0"] * 12), "strings"),
        (np.array([1.0, "a"] * 6, dtype=object), "Python objects"),
        (np.array(["2020-01-01"] * 12, dtype="datetime64[D]"), "dates"),
        (pd.Series(["a", "b"] * 6), "non-numeric"),
        ([1 + 2j] * 12, "complex"),
    ],
    ids=["complex", "strings", "object", "dates", "series-of-strings", "list-of-complex"],
)
def test_non_numeric_arrays_are_refused_naming_the_argument(value, kind):
    with pytest.raises(avi.DataError, match=rf"argument 0.*{kind}"):
        avi.fit(hierarchical, value, family="factorized", **FAST)


def test_a_jax_key_as_data_is_refused():
    with pytest.raises(avi.DataError, match="JAX random key"):
        convert_argument(jax.random.key(0), "argument 0")


def test_lists_of_non_numbers_are_the_models_own():
    names = ["a", "b"]
    assert convert_argument(names, "argument 1") is names


def test_zero_dimensional_scalars_are_scalars(data):
    x, y = data
    fit = avi.fit(regression, x, y, family="factorized", **FAST)
    scalar = avi.fit(
        lambda s, x, y: regression(s * x, y), np.float32(1.0), x, y, family="factorized", **FAST
    )
    assert fit.num_steps == scalar.num_steps == 5
    zero_d = avi.fit(
        lambda s, x, y: regression(s * x, y), np.array(1.0), x, y, family="factorized", **FAST
    )
    assert zero_d.num_steps == 5


def test_a_zero_dimensional_array_as_the_data_gets_an_avi_error():
    with pytest.raises(avi.ModelError):
        avi.fit(hierarchical, np.array(3.0), family="factorized", **FAST)


# ---- precision --------------------------------------------------------------------------------


def test_float64_data_that_float32_would_collapse_are_refused():
    """The silent wrong answer: 1e8 + noise became 3 distinct float32 values."""
    y = 1e8 + np.random.default_rng(0).normal(size=50)
    assert len(np.unique(y.astype(np.float32))) < 10
    with pytest.raises(avi.DataError, match=r"argument 0.*float32.*[Cc]entre and scale"):
        avi.fit(hierarchical, y, family="factorized", **FAST)


def test_float64_beyond_float32_range_is_refused():
    with pytest.raises(avi.DataError, match=r"keyword argument 'y'.*float32's range"):
        avi.fit(hierarchical, y=np.full(10, 1e39), family="factorized", **FAST)


def test_centred_float64_data_are_accepted():
    y = 1e8 + np.random.default_rng(0).normal(size=50)
    fit = avi.fit(hierarchical, y - y.mean(), family="factorized", **FAST)
    assert fit.num_steps == 5


def test_large_offset_with_large_spread_is_accepted():
    y = 1e4 + 1e2 * np.random.default_rng(0).normal(size=50)
    assert convert_argument(y, "y") is y


def test_integers_beyond_int32_are_refused():
    with pytest.raises(avi.DataError, match="int32"):
        convert_argument(np.array([1, 2**40], dtype=np.int64), "argument 2")


def test_collapse_in_one_column_is_named():
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(size=40), 1e9 + rng.normal(size=40)], axis=1)
    with pytest.raises(avi.DataError, match="column 1"):
        convert_argument(x, "argument 0")


# ---- shapes against plates --------------------------------------------------------------------


def test_observations_with_a_trailing_axis_of_one_are_refused(data):
    """The silent wrong answer: y of shape (N, 1) fit an N x N broadcast likelihood."""
    _, y = data
    with pytest.raises(avi.ModelError, match=r"'y'.*\(30, 1\).*\(30,\).*\(30, 30\)"):
        avi.fit(hierarchical, y[:, None], family="factorized", **FAST)


def test_an_observed_site_without_data_is_not_called_only_a_latent():
    def logistic(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", len(x)):
            z = numpyro.sample("z", dist.Normal(w * x, 1.0))
            numpyro.sample("y", dist.Bernoulli(logits=z), obs=y)

    with pytest.raises(avi.ModelError, match=r"'y'.*obs= was None: pass its data"):
        avi.fit(logistic, np.zeros(10, np.float32), family="factorized", **FAST)


def test_no_plate_with_observations_is_explained():
    def outside(y):
        theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(theta, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    with pytest.raises(avi.ModelError, match="No plate holds an observed site"):
        avi.fit(outside, np.zeros(10, np.float32), family="factorized", **FAST)


def test_an_invalid_parameter_at_the_trace_point_gets_a_relevant_hint():
    def sqrt_of_a_real(y):
        s = numpyro.sample("s", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, jnp.sqrt(s)))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with (
        pytest.raises(avi.ModelError, match="prior on its domain") as caught,
        numpyro.validation_enabled(),
    ):
        avi.fit(sqrt_of_a_real, np.zeros(10, np.float32), family="factorized", **FAST)
    assert "Leading lengths" not in str(caught.value)


def test_python_control_flow_on_a_latent_is_explained():
    def branching(y):
        theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
        shift = 1.0 if theta > 0 else -1.0
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(theta + shift, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(avi.ModelError, match=r"control flow.*jnp\.where"):
        avi.fit(branching, np.zeros(10, np.float32), family="factorized", **FAST)
