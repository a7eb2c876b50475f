"""avi.check compiles its analysis program once per model and analysed problem.

A second check of the same model on new data of the same shapes reuses the compiled program
(no XLA compilation at all); a different model, different shapes or different values of the
model's other arguments (constants of the program) compile a program of their own.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from compile_counter import COUNTER

import avi


def data(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def compilations(model, *args, **kwargs) -> tuple[avi.StructureReport, int]:
    """The report of ``avi.check`` and the number of XLA compilations it triggered."""
    start = COUNTER.count
    report = avi.check(model, *args, **kwargs)
    return report, COUNTER.count - start


def lagged(x, weights):
    """z_n ~ N(weights[0] x_{n-1} + weights[1] x_{n-2}, 1): the window follows ``weights``."""
    lag1 = jnp.concatenate([jnp.zeros(1), x[:-1]])
    lag2 = jnp.concatenate([jnp.zeros(2), x[:-2]])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(weights[0] * lag1 + weights[1] * lag2, 1))
        numpyro.sample("x", dist.Normal(z, 1), obs=x)


def test_second_check_of_new_data_with_the_same_shapes_compiles_nothing():
    def hierarchical(x):  # a new function: nothing of it is compiled yet
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    first, compiled = compilations(hierarchical, data(60, seed=1))
    assert compiled > 0  # the counter sees the first check's compilations
    second, recompiled = compilations(hierarchical, data(60, seed=2))
    assert recompiled == 0
    assert second == first
    assert first.verdict == "simple-hierarchical"


def test_new_shapes_compile_anew():
    def hierarchical(x):
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    compilations(hierarchical, data(20, seed=1))
    report, compiled = compilations(hierarchical, data(24, seed=1))
    assert compiled > 0
    assert "N = 24" in report.explanation


def test_another_model_with_the_same_shapes_compiles_its_own_program():
    def hierarchical(x):
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    def saw(x):
        x_prev = jnp.concatenate([jnp.zeros(1), x[:-1]])
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(x_prev, 1))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    x = data(40, seed=3)
    compilations(hierarchical, x)
    report, compiled = compilations(saw, x)
    assert compiled > 0
    assert (report.verdict, report.inputs) == ("expanded-domain", (-1, 0))


def test_other_values_of_a_constant_argument_compile_anew():
    """The weights are constants of the program, so their values are part of its key."""
    x = data(40, seed=4)
    first, _ = compilations(lagged, x, np.array([1.0, 0.0]))
    second, compiled = compilations(lagged, x, np.array([0.0, 1.0]))
    assert compiled > 0
    assert (first.inputs, second.inputs) == ((-1, 0), (-2, 0))
    again, recompiled = compilations(lagged, data(40, seed=5), np.array([1.0, 0.0]))
    assert recompiled == 0
    assert again.inputs == (-1, 0)


def test_an_unhashable_argument_is_checked_without_reuse():
    def scaled(x, options):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0, options.scale))
            numpyro.sample("x", dist.Normal(z, 1), obs=x)

    options = SimpleNamespace(scale=2.0)  # defines __eq__ and no __hash__
    first, _ = compilations(scaled, data(30, seed=6), options)
    second, compiled = compilations(scaled, data(30, seed=7), options)
    assert compiled > 0
    assert first == second
    assert first.verdict == "simple-hierarchical"
