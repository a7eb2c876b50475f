"""Every option of avi.fit is type-checked before the fit (avi.options): seeds, tolerances,
devices, booleans, the stop rule's options beside num_steps, callbacks, Window offsets and the
Fit's methods."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import avi
from avi.options import check_callback

FAST = {"num_steps": 5, "progress": False}


def hierarchical(y):
    theta = numpyro.sample("theta", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(theta, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


Y = np.random.default_rng(0).normal(size=20).astype(np.float32)


def fit(**options):
    return avi.fit(hierarchical, Y, **{"family": "factorized", **FAST, **options})


@pytest.mark.parametrize(
    "seed",
    ["0", 1.0, None, -1, 2**32, 2**70, True, np.array([0, 1])],
    ids=["str", "float", "None", "negative", "2**32", "2**70", "bool", "array"],
)
def test_bad_seeds_are_refused(seed):
    with pytest.raises(avi.AviError, match="seed"):
        fit(seed=seed)


@pytest.mark.parametrize("make", [lambda: jax.random.PRNGKey(0), lambda: jax.random.key(0)])
def test_jax_keys_as_seed_are_refused_with_the_fix(make):
    with pytest.raises(avi.AviError, match="integer seed"):
        fit(seed=make())


def test_numpy_integer_seeds_are_seeds():
    assert fit(seed=np.int64(3)).num_steps == 5


def test_seed_of_sample_and_elbo_is_checked():
    result = fit()
    with pytest.raises(avi.AviError, match="seed"):
        result.sample(3, seed="x")
    with pytest.raises(avi.AviError, match="seed"):
        result.elbo(10, seed=None)


@pytest.mark.parametrize("tol", [float("inf"), float("nan"), 0.0, -1e-3, "1e-3", True])
def test_bad_tolerances_are_refused(tol):
    with pytest.raises(avi.AviError, match="tol="):
        avi.fit(hierarchical, Y, family="factorized", tol=tol, max_steps=10, progress=False)


def test_numpy_float_tolerance_is_a_tolerance():
    with pytest.warns(avi.ConvergenceWarning):  # 10 steps: accepted, and not converged
        result = avi.fit(
            hierarchical, Y, family="factorized", tol=np.float32(1e-3), max_steps=10, progress=False
        )
    assert result.num_steps <= 10


@pytest.mark.parametrize(
    ("devices", "match"),
    [
        ([], "at least one device"),
        (["cpu"], "not a JAX device"),
        ("cpu", "list of JAX devices"),
        (jax.devices()[:1] * 2, "more than once"),
    ],
    ids=["empty", "string-in-list", "string", "duplicated"],
)
def test_bad_devices_are_refused(devices, match):
    with pytest.raises(avi.AviError, match=match):
        fit(devices=devices)


@pytest.mark.parametrize(
    ("name", "value"),
    [(n, v) for n in ("progress", "sticking_the_landing", "anneal") for v in ("no", 0, None)][
        :-1
    ],  # anneal=None is its default (decided by the optimizer)
)
def test_booleans_must_be_booleans(name, value):
    options = {"progress": False, name: value}
    with pytest.raises(avi.AviError, match=name):
        avi.fit(hierarchical, Y, family="factorized", max_steps=5, **options)


@pytest.mark.parametrize(
    "extra", [{"max_steps": 100}, {"anneal": False}, {"tol": 1e-3}], ids=lambda e: next(iter(e))
)
def test_stop_rule_options_beside_num_steps_are_refused(extra):
    with pytest.raises(avi.AviError, match="turns the stop rule off"):
        fit(**extra)


def test_numpy_integers_are_accepted_as_sizes():
    result = fit(num_steps=np.int64(5), chunk_size=np.int32(5), batch_size=np.int64(10))
    assert result.num_steps == 5
    encoder = avi.MLP(width=np.int64(4), depth=np.int32(1))
    assert (encoder.width, encoder.depth) == (4, 1)
    assert avi.Polynomial(np.int64(1)).degree == 1


def test_callback_that_is_not_callable_is_refused_before_the_fit():
    with pytest.raises(avi.AviError, match="not callable"):
        fit(callback=3)


def test_callback_with_the_wrong_signature_is_refused_before_the_fit():
    calls = []

    def one_argument(step):
        calls.append(step)

    with pytest.raises(avi.AviError, match=r"callback\(step, params, problem\)"):
        fit(callback=one_argument)
    assert calls == []


def test_callbacks_with_defaults_or_varargs_are_accepted():
    check_callback(lambda step, params, problem, extra=None: None)
    check_callback(lambda *args: None)
    check_callback(print)


def test_a_raising_callback_keeps_the_fit():
    def failing(step, params, problem):
        if step >= 10:
            raise RuntimeError("disk full")

    with pytest.raises(
        avi.CallbackError, match=r"RuntimeError: disk full \(after step 10\)"
    ) as caught:
        avi.fit(
            hierarchical, Y, family="factorized", num_steps=30, chunk_size=5, progress=False,
            callback=failing,
        )  # fmt: skip
    kept = caught.value.fit
    assert isinstance(kept, avi.Fit) and kept.num_steps == 10
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert kept.sample(2)["theta"].shape == (2,)


def test_window_offsets_must_be_a_tuple():
    with pytest.raises(avi.FamilyError, match=r"offsets=5.*offsets=\(5,\)"):
        avi.Window(offsets=5)


def test_window_offsets_beyond_the_data_are_refused_naming_n():
    """The silent wrong answer: offsets >= N turned A-VI into F-VI."""
    family = avi.Amortized(avi.MLP(4), inputs=avi.Window((-30, 0)))
    with pytest.raises(avi.FamilyError, match="N=20"):
        fit(family=family)


@pytest.mark.parametrize("num_samples", [-1, 0, 2.5, "3"])
def test_sample_counts_are_checked(num_samples):
    result = fit()
    with pytest.raises(avi.AviError, match="num_samples"):
        result.sample(num_samples)


def test_learning_rate_accepts_numpy_floats_and_refuses_inf():
    assert fit(learning_rate=np.float32(0.01)).num_steps == 5
    with pytest.raises(avi.AviError, match="learning_rate"):
        fit(learning_rate=float("inf"))


def test_a_misspelt_option_reaching_the_model_is_explained():
    with pytest.raises(avi.ModelError, match="spelling of avi.fit's options"):
        avi.fit(hierarchical, Y, family="factorized", num_step=5, progress=False)
