"""The pure pair init/step (avi.vi.build), resuming a run, and compilation reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_counter import COUNTER

import avi
from avi.paper.experiments import linear


def _max_difference(a, b) -> float:
    leaves_a = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))
    leaves_b = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))
    assert len(leaves_a) == len(leaves_b)
    differences = [
        np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))
        for u, v in zip(leaves_a, leaves_b, strict=True)
        if np.size(u) and np.all(np.isfinite(u))
    ]
    return max((float(np.max(d)) for d in differences), default=0.0)


@pytest.mark.parametrize(
    "family, batch_size",
    [
        (avi.Factorized(), None),
        (avi.Factorized(), 40),
        (avi.Amortized(avi.MLP(width=8)), None),
        (avi.Amortized(avi.MLP(width=8)), 40),
    ],
)
def test_a_user_loop_over_init_and_step_gives_the_fit(family, batch_size):
    x = linear.simulate(300, seed=3)
    fitted = avi.fit(
        linear.model,
        x,
        family=family,
        batch_size=batch_size,
        num_steps=60,
        seed=5,
        chunk_size=25,
        progress=False,
    )
    algorithm = avi.vi.build(linear.model, x, family=family, batch_size=batch_size)
    init_key, run_key, _ = avi.vi.fit_keys(5)
    state = algorithm.init(init_key)
    step = eqx.filter_jit(algorithm.step)
    for k in range(60):
        batch_key, draw_key = avi.vi.step_keys(run_key, k)
        state, info = step(draw_key, state, algorithm.draw_batch(batch_key))
        assert bool(info.finite)
    assert int(state.step) == fitted.num_steps == 60
    # Same numbers in a Python loop and in compiled chunks, up to float32 fusion differences.
    assert _max_difference(state.params, fitted.params) < 1e-4


def test_a_resumed_run_draws_what_an_uninterrupted_one_would():
    x = linear.simulate(200, seed=0)
    algorithm = avi.vi.build(linear.model, x, family=avi.Factorized(), batch_size=20)
    init_key, run_key, _ = avi.vi.fit_keys(0)
    whole = avi.vi.run(algorithm, algorithm.init(init_key), run_key, 200, chunk_size=50)
    half = avi.vi.run(algorithm, algorithm.init(init_key), run_key, 100, chunk_size=50)
    rest = avi.vi.run(algorithm, half.state, run_key, 200, chunk_size=50)
    assert int(rest.state.step) == 200
    assert _max_difference(rest.state, whole.state) == 0.0
    assert list(rest.history.step) == [150, 200]


def test_fit_exposes_its_state_and_why_it_stopped():
    x = linear.simulate(200, seed=0)
    fixed = avi.fit(linear.model, x, family="constant", num_steps=120, progress=False)
    assert fixed.stop_reason == "num_steps" and not fixed.converged
    assert int(fixed.state.step) == 120 and fixed.num_skipped == 0
    ruled = avi.fit(linear.model, x, family="constant", progress=False)
    assert ruled.stop_reason == "converged" and ruled.converged
    assert int(ruled.state.stop.stage) == 2  # the default optimizer annealed twice
    stopped = avi.fit(
        linear.model, x, family="constant", progress=False, callback=lambda *a: True
    )
    assert stopped.stop_reason == "callback" and stopped.num_steps == 100


def test_a_divergence_backs_off_and_goes_on():
    """SGD at rate 3 diverges at once; from the last finite state at a tenth of the scale (or
    a hundredth) it does not: the back-offs are in the history and the fit ends finite."""
    x = np.linspace(-1, 1, 10).astype(np.float32)
    fit = avi.fit(
        linear.model, x, family="constant", optimizer=optax.sgd(3.0), num_steps=300, progress=False
    )
    assert len(fit.history.backoff) >= 1 and fit.history.backoff[0] == 0
    assert fit.num_steps == 300 and fit.history.step[-1] == 300
    assert np.all(np.isfinite(np.asarray(fit.params.global_loc)))


def test_a_divergence_beyond_the_back_offs_raises_with_the_last_finite_fit():
    x = np.linspace(-1, 1, 10).astype(np.float32)
    with pytest.raises(avi.DivergenceError, match="after 3 back-offs") as caught:
        avi.fit(
            linear.model, x, family="constant", optimizer=optax.sgd(1e30), num_steps=50,
            progress=False,
        )
    fit = caught.value.fit
    assert fit.stop_reason == "diverged" and not fit.converged
    assert list(fit.history.backoff) == [0, 0, 0]
    assert np.all(np.isfinite(np.asarray(fit.params.global_loc)))


def test_learning_rate_and_optimizer_are_exclusive():
    x = linear.simulate(50, seed=0)
    with pytest.raises(avi.AviError, match="learning_rate"):
        avi.fit(linear.model, x, optimizer=optax.adam(1e-2), learning_rate=1e-3, progress=False)
    with pytest.raises(avi.AviError, match="learning_rate=-1"):
        avi.fit(linear.model, x, family="constant", learning_rate=-1, progress=False)


def test_learning_rate_is_used():
    x = linear.simulate(100, seed=0)
    slow = avi.fit(linear.model, x, family="constant", learning_rate=1e-6, num_steps=10,
                   progress=False)
    fast = avi.fit(linear.model, x, family="constant", learning_rate=1e-1, num_steps=10,
                   progress=False)
    assert abs(float(slow.params.global_loc[0])) < 1e-4 < abs(float(fast.params.global_loc[0]))


# ---------------------------------------------------------------------------- compilation


def _fit_twice(first: dict, second: dict, *args_first, args_second) -> int:
    """Compilations of the second fit and its certificate, after the first's."""
    _ = avi.fit(linear.model, *args_first, progress=False, **first).certificate
    before = COUNTER.count
    _ = avi.fit(linear.model, *args_second, progress=False, **second).certificate
    return COUNTER.count - before


@pytest.mark.parametrize("batch_size", [None, 50])
def test_fits_differing_in_seed_data_and_learning_rate_share_one_program(batch_size):
    family = avi.Amortized(avi.MLP(width=4))
    options = {"family": family, "batch_size": batch_size, "num_steps": 300}
    new = _fit_twice(
        {**options, "seed": 0},
        {**options, "seed": 1, "learning_rate": 3e-2},
        linear.simulate(400, seed=1),
        args_second=(linear.simulate(400, seed=2),),
    )
    assert new == 0


def test_a_reused_user_optimizer_compiles_once():
    optimizer = optax.adam(3e-3)
    options = {"family": avi.Factorized(), "optimizer": optimizer, "num_steps": 200}
    new = _fit_twice(
        options, {**options, "seed": 4}, linear.simulate(90), args_second=(linear.simulate(90, 1),)
    )
    assert new == 0


def test_streamed_fits_share_one_program(tmp_path):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"x{seed}.npy")
        np.save(paths[-1], linear.simulate(20_000, seed=seed))
    first, second = (np.load(p, mmap_mode="r") for p in paths)
    options = {"family": avi.Amortized(avi.Polynomial(1)), "num_steps": 200, "batch_size": 256}
    new = _fit_twice({**options, "seed": 0}, {**options, "seed": 1}, first, args_second=(second,))
    assert new == 0


def test_elbo_reuses_one_program_for_any_number_of_draws():
    fit = avi.fit(linear.model, linear.simulate(500), family="constant", num_steps=10,
                  progress=False)
    fit.elbo(num_particles=10)
    before = COUNTER.count
    for num_particles in (2, 37, 1000, 129):
        estimate = fit.elbo(num_particles=num_particles)
        assert np.isfinite(estimate.mean)
    assert COUNTER.count == before
    assert fit.elbo_draws(37).shape == (37,)


SHARDED = """
import json, jax, numpy as np, avi
from avi.paper.experiments import linear
events = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: events.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None)
out = {}
for name, family, batch in [("factorized", avi.Factorized(), None),
                            ("amortized-batch", avi.Amortized(avi.MLP(4)), 100)]:
    avi.fit(linear.model, linear.simulate(800, seed=0), family=family, batch_size=batch,
            num_steps=300, progress=False).certificate
    before = len(events)
    fit = avi.fit(linear.model, linear.simulate(800, seed=1), family=family, batch_size=batch,
                  num_steps=300, progress=False, seed=3, learning_rate=2e-2)
    fit.certificate
    out[name] = {"new": len(events) - before,
                 "sharded": list(fit.problem.args[0].sharding.spec) == ["data"]}
print(json.dumps(out))
"""


def test_sharded_fits_share_one_program():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, check=True
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("factorized", "amortized-batch"):
        assert out[name] == {"new": 0, "sharded": True}, (name, out)


def test_build_checks_its_options():
    x = linear.simulate(50)
    with pytest.raises(avi.AviError, match="optax GradientTransformation"):
        avi.vi.build(linear.model, x, family="constant", optimizer="adam")
    algorithm = avi.vi.build(linear.model, x, family="constant")
    state = algorithm.init(jax.random.PRNGKey(0))
    assert float(state.opt_state.dense.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    assert jnp.shape(state.params.global_loc) == (1,)


def test_kl_warmup_weights_the_prior_and_entropy_then_reaches_the_same_optimum():
    """beta = 1 is the ELBO (same draws, same value); beta = 0 leaves the likelihood alone; a
    fit warmed up over 1,000 steps ends certified at the closed-form optimum, the stop rule
    idle until the warm-up ends."""
    x = linear.simulate(300, seed=0)
    algorithm = avi.vi.build(linear.model, x, family="factorized")
    params = algorithm.init(jax.random.PRNGKey(0)).params
    key = jax.random.PRNGKey(1)
    from avi.vi.elbo import elbo_draws

    plain = elbo_draws(key, params, algorithm.problem, None, 8)
    full = elbo_draws(key, params, algorithm.problem, None, 8, kl_weight=jnp.float32(1.0))
    np.testing.assert_allclose(np.asarray(full), np.asarray(plain), rtol=1e-5)
    likelihood = elbo_draws(key, params, algorithm.problem, None, 8, kl_weight=jnp.float32(0.0))
    half = elbo_draws(key, params, algorithm.problem, None, 8, kl_weight=jnp.float32(0.5))
    # linear in beta on the same draws, and the likelihood alone differs from the ELBO
    np.testing.assert_allclose(
        np.asarray(half), (np.asarray(likelihood) + np.asarray(full)) / 2, rtol=1e-5
    )
    assert np.all(np.abs(np.asarray(likelihood) - np.asarray(plain)) > 1.0)
    fit = avi.fit(linear.model, x, family="factorized", kl_warmup=1_000, progress=False)
    assert fit.converged and fit.num_steps > 1_000
    optimum = linear.factorized_optimum(x)
    z = fit.posterior()["z"]
    assert np.max(np.abs(np.asarray(z.loc) - optimum.z.mean) / np.sqrt(optimum.z.var)) < 0.05
    with pytest.raises(avi.AviError, match="kl_warmup=-1"):
        avi.fit(linear.model, x, kl_warmup=-1, progress=False)
