"""Families and encoders: shapes, windows (Remark 3.7), custom equinox encoders."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avi
from avi.paper.experiments import linear


@settings(max_examples=50, deadline=None)
@given(
    num_data=st.integers(1, 30),
    num_features=st.integers(1, 3),
    offsets=st.lists(st.integers(-3, 3), min_size=1, max_size=4, unique=True),
)
def test_window_stacks_neighbours_and_flags_incomplete_data(num_data, num_features, offsets):
    features = np.arange(num_data * num_features, dtype=np.float32).reshape(num_data, num_features)
    windowed, complete = avi.Window(offsets=tuple(offsets)).apply(features)
    assert windowed.shape == (num_data, num_features * len(offsets))
    for n in range(num_data):
        neighbours = [n + o for o in offsets]
        assert complete[n] == all(0 <= m < num_data for m in neighbours)
        if complete[n]:
            np.testing.assert_array_equal(windowed[n], features[neighbours].reshape(-1))


def saw_model(x, alpha=0.75):
    theta = numpyro.sample("theta", dist.Normal(0, 1))
    x_previous = jnp.concatenate([jnp.zeros(1), x[:-1]])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(x_previous, 1))
        numpyro.sample("x", dist.Normal(alpha * (theta + z), 1), obs=x)


def test_window_gives_edge_data_free_parameters():
    x = np.random.default_rng(0).standard_normal(40).astype(np.float32)
    family = avi.Amortized(avi.MLP(width=4), inputs=avi.Window(offsets=(-1, 0)))
    fit = avi.fit(saw_model, x, family=family, num_steps=200, progress=False)
    assert fit.params.local["free_loc"].shape == (1, 1)
    loc, _ = fit.local_factors()
    assert float(loc[0, 0]) == float(fit.params.local["free_loc"][0, 0])
    new_loc, _ = fit.local_factors(x[:10])
    assert np.isnan(new_loc[0, 0]) and np.isfinite(new_loc[1:]).all()


class ShiftEncoder(eqx.Module):
    """A user's own encoder: loc = a * x, log_scale = b."""

    a: jax.Array
    b: jax.Array

    def __call__(self, features):
        return self.a * features[:1], self.b


def test_custom_equinox_encoder(linear_data, linear_optimum):
    encoder = ShiftEncoder(jnp.zeros(1), jnp.zeros(1))
    fit = avi.fit(linear.model, linear_data, family=avi.Amortized(encoder), progress=False)
    # Standardized inputs: loc = a (x - xbar) / sd(x) is the ideal function's form.
    slope = linear.TAU / (linear.SIGMA**2 + linear.TAU**2)
    assert float(fit.params.local["encoder"].a[0]) == pytest.approx(
        slope * linear_data.std(), rel=0.02
    )


def test_custom_encoder_with_wrong_output_is_rejected():
    encoder = ShiftEncoder(jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(avi.FamilyError, match=r"of shapes loc \(1,\), log_scale \(1,\)"):
        avi.fit(linear.model, linear.simulate(20), family=avi.Amortized(encoder), progress=False)


def test_string_families_and_parameter_counts():
    x = linear.simulate(50)
    counts = {
        name: avi.fit(linear.model, x, family=name, num_steps=5, progress=False).num_parameters
        for name in ("factorized", "constant")
    }
    assert counts == {"factorized": 2 * 50 + 2, "constant": 2 + 2}
    polynomial = avi.fit(
        linear.model, x, family=avi.Amortized(avi.Polynomial(2)), num_steps=5, progress=False
    )
    assert polynomial.num_parameters == 2 + (2 + 1 + 1)
