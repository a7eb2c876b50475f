"""Errors a user can cause: each names the argument or site and the fix."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi
from avi.paper.experiments import linear


def no_plate_model(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    numpyro.sample("x", dist.Normal(mu, 1).expand([x.shape[0]]).to_event(1), obs=x)


def two_plates_model(x, y):
    with numpyro.plate("a", x.shape[0]):
        u = numpyro.sample("u", dist.Normal(0, 1))
        numpyro.sample("x", dist.Normal(u, 1), obs=x)
    with numpyro.plate("b", y.shape[0]):
        v = numpyro.sample("v", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(v, 1), obs=y)


def discrete_model(x):
    with numpyro.plate("data", x.shape[0]):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(k, 1), obs=x)


def covariate_model(x, c):
    beta = numpyro.sample("beta", dist.Normal(0, 1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1))
        numpyro.sample("x", dist.Normal(z + beta * c, 1), obs=x)


def param_model(x):
    mu = numpyro.param("mu", 0.0)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1))
        numpyro.sample("x", dist.Normal(z, 1), obs=x)


X = np.linspace(-1, 1, 20).astype(np.float32)


def test_no_plate():
    with pytest.raises(avi.ModelError, match="no numpyro.plate"):
        avi.fit(no_plate_model, X, progress=False)


def test_ambiguous_plate_and_its_override():
    with pytest.raises(avi.ModelError, match="plate='name'"):
        avi.fit(two_plates_model, X, X[:10], progress=False)
    with pytest.raises(avi.ModelError, match="plate='c' is not a plate"):
        avi.fit(two_plates_model, X, X[:10], plate="c", progress=False)


def test_discrete_local_latent():
    with pytest.raises(avi.ModelError, match="'k' is discrete.*enumeration.*not supported"):
        avi.fit(discrete_model, X, progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data(bad):
    x = X.copy()
    x[3] = bad
    with pytest.raises(avi.DataError, match=r"argument 0 holds non-finite.*index \(3,\)"):
        avi.fit(linear.model, x, progress=False)
    assert np.isnan(x[3]) or np.isinf(x[3])  # the user's array is left as it was


def test_non_finite_keyword_argument():
    with pytest.raises(avi.DataError, match="keyword argument 'c'"):
        avi.fit(covariate_model, X, c=np.full(20, np.nan), progress=False)


def test_mismatched_per_datum_lengths():
    with pytest.raises(avi.ModelError, match="argument 0: 20, argument 1: 19"):
        avi.fit(covariate_model, X, X[:19], progress=False)


def test_posterior_of_new_data_on_factorized_fit():
    fit = avi.fit(linear.model, X, family="factorized", num_steps=10, progress=False)
    with pytest.raises(avi.FamilyError, match="Factorized fit .* cannot infer"):
        fit.posterior(X[:3])


def test_param_site_is_learned_not_refused():
    fit = avi.fit(param_model, X, family="factorized", num_steps=10, progress=False)
    assert set(fit.model_params) == {"mu"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"family": "mean-field"}, "family='mean-field' is not a variational family"),
        ({"batch_size": 21}, "batch_size=21 exceeds"),
        ({"num_steps": 0}, "num_steps=0"),
        ({"num_particles": 1.5}, "num_particles=1.5"),
        ({"tol": -1.0}, "tol=-1.0"),
        ({"optimizer": "adam"}, "not an optax GradientTransformation"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(avi.AviError, match=message):
        avi.fit(linear.model, X, progress=False, **options)


def test_bad_encoders():
    with pytest.raises(avi.FamilyError, match="width must be a positive integer"):
        avi.MLP(width=0)
    with pytest.raises(avi.FamilyError, match=r"activation='swish'\) is unknown"):
        avi.MLP(width=4, activation="swish")
    with pytest.raises(avi.FamilyError, match="give avi.MLP"):
        avi.Amortized(encoder="mlp")
    with pytest.raises(avi.FamilyError, match="repeats an offset"):
        avi.Window(offsets=(0, 0))


def test_errors_are_value_errors():
    assert issubclass(avi.AviError, ValueError)


def data_axis_last_model(y, c=None):
    with numpyro.plate("groups", y.shape[1], dim=-1):
        a = numpyro.sample("a", dist.Normal(0, 1) if c is None else dist.Normal(c, 1))
        with numpyro.plate("obs", y.shape[0], dim=-2):
            numpyro.sample("y", dist.Normal(a, 1), obs=y)


def test_minibatch_needs_the_data_axis_first():
    y = np.zeros((3, 20), np.float32)
    with pytest.raises(avi.ModelError, match="none has the data along its first axis"):
        avi.fit(data_axis_last_model, y, batch_size=5, progress=False)
    with pytest.raises(avi.ModelError, match="'y' has the data plate 'groups' on axis 1"):
        avi.fit(data_axis_last_model, y, np.zeros(20, np.float32), batch_size=5, progress=False)
    fit = avi.fit(data_axis_last_model, y, family="constant", num_steps=5, progress=False)
    assert fit.posterior()["a"].loc.shape == (20,)


def hidden_markov_model(x):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 10))
        previous = np.concatenate([np.zeros(1, np.float32), np.ones(x.shape[0] - 1, np.float32)])
        numpyro.factor("chain", dist.Normal(previous * jnp.roll(z, 1), 1).log_prob(z))
        numpyro.sample("x", dist.Normal(z, 1), obs=x)


def test_default_amortized_family_warns_on_a_not_amortizable_model():
    with pytest.warns(avi.AmortizationWarning, match="coupled"):
        avi.fit(hidden_markov_model, X, num_steps=5, progress=False)
    # An explicit family is a deliberate choice: no check, no warning.
    avi.fit(hidden_markov_model, X, family=avi.Amortized(avi.MLP(4)), num_steps=5, progress=False)
