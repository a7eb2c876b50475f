"""A light ``import avi``, and the compiled factors of new data (:mod:`avi.new_data`).

The new-data factors are compared with the former computation (the model traced eagerly on
every call, features built on the host, the encoder run op by op over all data). The features
must be the same bits; the factors agree to float32 rounding only, because XLA fuses the
compiled encoder's operations (as in the training step) where the former ran them one by one:
observed differences are 1 to 4 ulps of the largest activations (<= 5e-7 at magnitudes ~1),
so the tolerance is 1e-6 absolute and relative.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from compile_counter import COUNTER

import avi
from avi.data.boundary import convert_arguments
from avi.data.groups import model_arguments
from avi.data.rows import per_datum_features
from avi.errors import FamilyError
from avi.model import trace_model
from avi.new_data import encode


def former_factors(fit: avi.Fit, *args, **kwargs) -> dict[str, jax.Array]:
    """lambda of new data as computed before the compiled programs."""
    args, kwargs = model_arguments(fit.traced.model, *convert_arguments(args, kwargs))
    traced = trace_model(fit.traced.model, args, kwargs, plate=fit.traced.layout.plate)
    local_data = fit.family.prepare(fit.scaling.apply(per_datum_features(traced, args, kwargs)))
    lacking = local_data.free_slot >= 0
    served = local_data._replace(free_slot=jnp.full_like(local_data.free_slot, -1))
    theta = fit.params.global_loc
    lam = fit.family.local_params(fit.params.local, served, None, theta=theta)
    return {
        k: jnp.where(lacking.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.nan, v)
        for k, v in lam.items()
    }


def former_features(fit: avi.Fit, *args, **kwargs) -> np.ndarray:
    args, kwargs = model_arguments(fit.traced.model, *convert_arguments(args, kwargs))
    traced = trace_model(fit.traced.model, args, kwargs, plate=fit.traced.layout.plate)
    return fit.scaling.apply(per_datum_features(traced, args, kwargs))


def assert_same(fit: avi.Fit, *args, **kwargs) -> None:
    expected = former_factors(fit, *args, **kwargs)
    got = fit._factor_params(*args, **kwargs)
    assert set(got) == set(expected)
    for k in expected:
        np.testing.assert_allclose(
            np.asarray(got[k]), np.asarray(expected[k]), rtol=1e-6, atol=1e-6, err_msg=k
        )
    features = fit._new_data.features(
        fit.traced.model, fit.traced.layout.plate, *convert_arguments(args, kwargs),
        fit.scaling, lambda traced: None,
    )
    np.testing.assert_array_equal(np.asarray(features), former_features(fit, *args, **kwargs))


RUNS = {"count": 0}


def linear_model(x, tau=1.155, sigma=2.43):
    RUNS["count"] += 1
    theta = numpyro.sample("theta", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(theta + tau * z, sigma), obs=x)


def regression(u, y=None):
    """Per-datum covariate u (2 columns) and an observation that is not an argument column."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", u.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(u @ w + z, 1.0), obs=y)


def saw(x, alpha=0.75):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        mean = z + alpha * jnp.concatenate([jnp.zeros(1), z[:-1]])
        numpyro.sample("x", dist.Normal(mean, 1.0), obs=x)


def data(num: int, seed: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(num, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def linear_fit() -> avi.Fit:
    return avi.fit(
        linear_model, data(300, 0), family=avi.Amortized(avi.MLP(width=16)), num_steps=100,
        progress=False,
    )


def test_import_avi_loads_no_plotting_tables_or_paper() -> None:
    code = (
        "import sys, avi\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('pandas', 'matplotlib', 'arviz')"
        " or m.startswith(('avi.paper', 'avi.analysis', 'avi.cli', 'flowjax'))]\n"
        "assert not heavy, heavy\n"
        "names = [getattr(avi, n) for n in avi.__all__]\n"
        "assert avi.compare.__module__ == 'avi.analysis.compare' and 'sweep' in dir(avi)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        avi.nothing  # noqa: B018


def test_new_data_equal_former_and_model_not_rerun(linear_fit: avi.Fit) -> None:
    x_new = data(5000, 1)
    assert_same(linear_fit, x_new)
    linear_fit.posterior(x_new)
    RUNS["count"], compiled = 0, COUNTER.count
    posterior = linear_fit.posterior(data(5000, 2))
    assert RUNS["count"] == 0  # same shapes: the compiled program, no trace of the model
    assert COUNTER.count == compiled  # and no compilation
    assert posterior["z"].batch_shape == (5000,)
    linear_fit.posterior(data(77, 3))
    assert RUNS["count"] == 2  # new shapes: one eager trace (checks), one under jit
    linear_fit.posterior(data(77, 4), tau=1.155)
    assert RUNS["count"] == 4  # a keyword argument: another signature
    linear_fit.posterior(data(77, 5), tau=1.155)
    assert RUNS["count"] == 4


def test_chunked_pass_equals_one_pass(linear_fit: avi.Fit) -> None:
    features = jnp.asarray(data(2500, 6))[:, None]
    local_data = linear_fit.family.prepare(features)
    args = (linear_fit.family, linear_fit.params.local, local_data, linear_fit.params.global_loc)
    chunked, whole = encode(*args, 1024), encode(*args, 2500)
    for k in whole:
        np.testing.assert_array_equal(np.asarray(chunked[k]), np.asarray(whole[k]))


def test_regression_with_keyword_observation() -> None:
    u, y = data(200, 0, (2,)), data(200, 1)
    fit = avi.fit(
        regression, u, y=y, family=avi.Amortized(avi.MLP(width=8), given_globals=True),
        num_steps=50, progress=False,
    )
    assert fit.scaling.mean.shape == (3,)
    assert_same(fit, data(300, 2, (2,)), y=data(300, 3))
    assert_same(fit, data(300, 4, (2,)), y=data(300, 5))
    draws = fit.sample(4, data(300, 6, (2,)), y=data(300, 7))  # theta batched through the pass
    assert draws["z"].shape == (4, 300) and np.isfinite(draws["z"]).all()


def test_window_edges_nan_and_equal_former() -> None:
    family = avi.Amortized(avi.MLP(width=4), inputs=avi.Window(offsets=(-1, 0)))
    fit = avi.fit(saw, data(100, 0), family=family, num_steps=50, progress=False)
    x_new = data(2100, 1)
    assert_same(fit, x_new)
    assert np.isnan(np.asarray(fit.local_factors(x_new)[0][0])).all()
    assert np.isnan(fit.posterior(x_new)["z"].loc[0])


def test_plan_rebuilt_when_an_observation_stops_repeating_an_argument() -> None:
    def shifted(x, shift):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=x + shift)

    zero, one = np.zeros((), np.float32), np.ones((), np.float32)
    fit = avi.fit(shifted, data(100, 0), zero, family=avi.Amortized(avi.MLP(width=4)),
                  num_steps=20, progress=False)
    assert fit.scaling.mean.shape == (1,)  # y equals x: its column is not repeated
    assert_same(fit, data(100, 1), zero)
    with pytest.raises(FamilyError, match="2 features per datum"):
        fit.posterior(data(100, 2), one)  # same shapes, but y now differs from x
    assert_same(fit, data(100, 3), zero)
