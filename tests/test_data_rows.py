"""Which rows are datum n's (avi.data.rows): slicing, features, and minibatch preconditions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi
from avi.data.rows import check_minibatchable, map_per_datum, per_datum_features, slice_arguments
from avi.model import trace_model


def regression(covariate, y, scale=1.0, offset=None):
    beta = numpyro.sample("beta", dist.Normal(0, 1))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(beta * covariate.sum(-1), scale))
        numpyro.sample("y", dist.Normal(z, 1), obs=y)


def arguments(num_data=6):
    covariate = np.arange(num_data * 2, dtype=np.float32).reshape(num_data, 2)
    y = np.linspace(-1, 1, num_data).astype(np.float32)
    return covariate, y


def test_per_datum_arguments_are_the_arrays_with_the_plates_length():
    covariate, y = arguments()
    traced = trace_model(regression, (covariate, y, 2.0), {"offset": np.zeros(3)})
    assert traced.layout.per_datum_args == (0, 1)
    assert traced.layout.per_datum_kwargs == ()


def test_slicing_takes_the_rows_of_per_datum_arguments_only():
    covariate, y = arguments()
    layout = trace_model(regression, (covariate, y, 2.0), {}).layout
    index = jnp.array([4, 1])
    (c, yy, scale), kwargs = slice_arguments(layout, (covariate, y, 2.0), {}, index)
    np.testing.assert_array_equal(c, covariate[[4, 1]])
    np.testing.assert_array_equal(yy, y[[4, 1]])
    assert scale == 2.0 and kwargs == {}
    mapped, _ = map_per_datum(layout, (covariate, y, 2.0), {}, lambda a: a[:2])
    assert mapped[0].shape == (2, 2) and mapped[2] == 2.0


def test_features_are_arguments_then_observations_each_taken_once():
    covariate, y = arguments()
    traced = trace_model(regression, (covariate, y), {})
    features = per_datum_features(traced, (covariate, y), {})
    # covariate (2 columns), then y; the observed y is the argument y, so it is not repeated
    np.testing.assert_array_equal(features, np.column_stack([covariate, y]))


def test_minibatches_need_per_datum_arguments():
    def from_nothing():
        with numpyro.plate("data", 5):
            z = numpyro.sample("z", dist.Normal(0, 1))
            numpyro.sample("y", dist.Normal(z, 1), obs=jnp.arange(5.0))

    with pytest.raises(avi.ModelError, match="per-datum arguments"):
        check_minibatchable(trace_model(from_nothing))
