"""Optimisation: compiled once, exact step counts, minibatch scaling, divergence guard."""

from __future__ import annotations

import logging

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from compile_counter import COUNTER

import avi
from avi.paper.experiments import linear
from avi.vi.elbo import elbo_draws


def test_second_fit_with_same_shapes_does_not_recompile():
    x1 = linear.simulate(500, seed=1)
    x2 = linear.simulate(500, seed=2)
    family = avi.Amortized(avi.MLP(width=8))
    start = COUNTER.count
    avi.fit(linear.model, x1, family=family, num_steps=300, seed=0, progress=False)
    before = COUNTER.count
    assert before > start  # the counter sees the first fit's compilations
    fit = avi.fit(linear.model, x2, family=family, num_steps=300, seed=1, progress=False)
    assert COUNTER.count == before
    assert fit.num_steps == 300


class ChunkCompileLog(logging.Handler):
    """Counts compilations of the chunk program from JAX's compile log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Finished XLA compilation of jit(_run_chunk)" in record.getMessage():
            self.count += 1


def test_one_fit_compiles_its_chunk_once():
    handler = ChunkCompileLog()
    logger = logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            avi.fit(
                linear.model,
                linear.simulate(77),
                family="factorized",
                num_steps=350,
                progress=False,
            )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.count == 1


def test_fixed_step_count_is_exact_and_not_a_multiple_of_the_chunk():
    x = linear.simulate(100, seed=0)
    fit = avi.fit(linear.model, x, family="constant", num_steps=250, chunk_size=100, progress=False)
    assert fit.num_steps == 250
    assert not fit.converged
    assert list(fit.history.step) == [100, 200, 250]


def test_minibatch_elbo_is_unbiased():
    """The mean of minibatch ELBO estimates equals the full-data ELBO (N / B scaling)."""
    x = linear.simulate(1000, seed=0)
    fit = avi.fit(linear.model, x, family="factorized", num_steps=200, progress=False)
    full = fit.elbo_draws(4000, seed=0)
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    batch = jax.vmap(
        lambda k: elbo_draws(
            k, fit.params, fit.problem, jax.random.randint(k, (50,), 0, 1000), 1, False
        )[0]
    )(keys)
    batch = np.asarray(batch)
    stderr = np.hypot(full.std() / np.sqrt(full.size), batch.std() / np.sqrt(batch.size))
    assert abs(batch.mean() - full.mean()) < 4 * stderr


def test_minibatch_fit_reaches_the_optimum(linear_data, linear_optimum):
    fit = avi.fit(
        linear.model,
        linear_data,
        family=avi.Amortized(avi.Polynomial(1)),
        batch_size=500,
        progress=False,
    )
    estimate = fit.elbo(num_particles=1000)
    # Within 2 nats plus 4 standard errors of the closed-form optimum.
    assert linear_optimum.elbo - estimate.mean < 2.0 + 4 * estimate.stderr


def exploding_model(x):
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, scale), obs=x)


def test_divergence_guard_raises_a_clear_error():
    x = np.linspace(-1, 1, 10).astype(np.float32)
    with pytest.raises(avi.DivergenceError, match="Lower the learning rate"):
        avi.fit(
            exploding_model,
            x,
            family="constant",
            optimizer=optax.sgd(1e30),
            num_steps=300,
            progress=False,
        )


def test_user_optimizer_is_used_as_given():
    x = linear.simulate(200, seed=0)
    fit = avi.fit(
        linear.model, x, family="constant", optimizer=optax.sgd(0.0), num_steps=50, progress=False
    )
    assert float(fit.params.local["loc"][0]) == 0.0


def test_factorized_minibatch_step_touches_only_the_batch_rows():
    x = linear.simulate(100, seed=0)
    fit = avi.fit(linear.model, x, family="factorized", batch_size=5, num_steps=1, progress=False)
    changed = np.any(
        np.stack(
            [
                np.asarray(fit.params.local["loc"][:, 0]) != 0.0,
                np.asarray(fit.params.local["log_scale"][:, 0]) != np.float32(np.log(0.1)),
            ]
        ),
        axis=0,
    )
    assert 1 <= changed.sum() <= 5


def test_init_starts_from_given_parameters_and_is_checked():
    from avi.vi.elbo import VariationalParams

    x = linear.simulate(300, seed=0)
    amortized = avi.fit(linear.model, x, family=avi.Amortized(avi.Polynomial(1)), progress=False)
    loc, log_scale = amortized.local_factors()
    init = VariationalParams(
        amortized.params.global_loc,
        amortized.params.global_log_scale,
        {"loc": loc, "log_scale": log_scale},
    )
    refined = avi.fit(
        linear.model,
        x,
        family="factorized",
        init=init,
        num_steps=1,
        optimizer=optax.sgd(0.0),
        progress=False,
    )
    np.testing.assert_array_equal(np.asarray(refined.local_factors()[0]), np.asarray(loc))
    with pytest.raises(avi.AviError, match="init must be avi VariationalParams"):
        avi.fit(
            linear.model, x, family="factorized", init=amortized.params, num_steps=1, progress=False
        )
