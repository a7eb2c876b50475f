"""Streaming minibatches from a memory-mapped .npy file (data larger than memory)."""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi
from avi.paper.experiments import linear

NUM_DATA = 50_000


@pytest.fixture(scope="module")
def mapped(tmp_path_factory) -> np.memmap:
    path = tmp_path_factory.mktemp("stream") / "x.npy"
    np.save(path, linear.simulate(NUM_DATA, seed=0))
    return np.load(path, mmap_mode="r")


def test_streamed_amortized_fit_learns_the_ideal_function(mapped):
    fit = avi.fit(linear.model, mapped, family=avi.Amortized(avi.Polynomial(1)), progress=False)
    assert fit.streamed and fit.converged
    x_new = np.linspace(-6, 6, 25).astype(np.float32)
    z = fit.posterior(x_new)["z"]
    slope = linear.TAU / (linear.SIGMA**2 + linear.TAU**2)
    expected = slope * (x_new - float(np.mean(mapped)))
    # The encoder's intercept is learned from minibatches: 0.01 is ~4 times its sampling sd.
    np.testing.assert_allclose(np.asarray(z.loc), expected, atol=0.01)
    np.testing.assert_allclose(
        np.asarray(z.scale), np.sqrt(1 / (1 + linear.TAU**2 / linear.SIGMA**2)), rtol=0.02
    )
    theta = fit.posterior(x_new)["theta"]
    assert abs(float(theta.loc) - float(np.mean(mapped))) < 0.05


def test_streamed_fit_keeps_no_training_factors(mapped):
    fit = avi.fit(linear.model, mapped, family="constant", num_steps=10, progress=False)
    with pytest.raises(avi.FamilyError, match="streamed its data from a memory map"):
        fit.elbo(num_particles=10)
    with pytest.raises(avi.FamilyError, match="streamed its data from a memory map"):
        fit.posterior()


def test_streaming_refuses_factorized_and_windows(mapped):
    with pytest.raises(avi.FamilyError, match="F-VI keeps two parameters per datum"):
        avi.fit(linear.model, mapped, family="factorized", num_steps=1, progress=False)
    window = avi.Amortized(avi.MLP(4), inputs=avi.Window((-1, 0)))
    with pytest.raises(avi.FamilyError, match="Window encoder needs neighbouring rows"):
        avi.fit(linear.model, mapped, family=window, num_steps=1, progress=False)


def constant_observation_model(c):
    with numpyro.plate("data", c.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(z + c, 1), obs=np.zeros(c.shape[0], np.float32))


def test_streaming_needs_observations_among_the_arguments(mapped):
    with pytest.raises(avi.ModelError, match="Observed site 'y' does not take its values"):
        avi.fit(constant_observation_model, mapped, family="constant", num_steps=1, progress=False)


def test_non_finite_values_deep_in_a_memory_map_are_found(tmp_path):
    values = linear.simulate(3000, seed=1)
    values[2500] = np.nan
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(avi.DataError, match=r"index \(2500,\)"):
        avi.fit(linear.model, np.load(tmp_path / "bad.npy", mmap_mode="r"), progress=False)
