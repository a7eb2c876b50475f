"""Compiled optimisation: chunks of steps under one ``lax.scan``, a stop rule between chunks.

One step draws a batch (uniformly, with replacement: O(B) work whatever N is), estimates the
negative ELBO and its gradient, and applies the optax transform. A step whose loss or gradient
is not finite is skipped (the divergence guard); the Python loop between chunks raises once a
whole chunk diverged. Steps past the requested count are masked, so every chunk has the same
length and the program compiles once per fit; ``equinox.filter_jit`` caches it across fits of
the same model, family, optimizer and data shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avi.elbo import Problem, VariationalParams, elbo_draws


@dataclass(frozen=True)
class StepSettings:
    """Static settings of a step: batch size (None: full batch), draws, estimator, chunk length."""

    batch_size: int | None
    num_particles: int
    sticking_the_landing: bool
    chunk_size: int


class OptState(NamedTuple):
    """Optimiser state between chunks."""

    params: VariationalParams
    opt_state: Any
    step: jax.Array


class ChunkInfo(NamedTuple):
    """Per-step diagnostics of one chunk."""

    elbo: jax.Array
    finite: jax.Array


@lru_cache(maxsize=None)
def default_optimizer(learning_rate: float = 1e-2) -> optax.GradientTransformation:
    """Adam at the given rate (cached, so that repeated fits reuse the compiled program)."""
    return optax.adam(learning_rate)


def _trainable(params: VariationalParams) -> VariationalParams:
    return eqx.filter(params, eqx.is_inexact_array)


def init_state(params: VariationalParams, optimizer: optax.GradientTransformation) -> OptState:
    """Initial optimiser state for the given parameters."""
    return OptState(params, optimizer.init(_trainable(params)), jnp.zeros((), jnp.int32))


def _step(
    problem: Problem,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
    total_steps: jax.Array,
    learning_rate_scale: jax.Array,
    state: OptState,
    key: jax.Array,
) -> tuple[OptState, ChunkInfo]:
    batch_key, draw_key = jax.random.split(key)
    if settings.batch_size is None:
        index = None
    else:
        index = jax.random.randint(batch_key, (settings.batch_size,), 0, problem.layout.num_data)
    trainable, static = eqx.partition(state.params, eqx.is_inexact_array)

    def loss(trainable_params: VariationalParams) -> jax.Array:
        params = eqx.combine(trainable_params, static)
        draws = elbo_draws(
            draw_key, params, problem, index, settings.num_particles, settings.sticking_the_landing
        )
        return -jnp.mean(draws)

    value, grads = jax.value_and_grad(loss)(trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    updates = jax.tree_util.tree_map(lambda u: learning_rate_scale * u, updates)
    new_trainable = optax.apply_updates(trainable, updates)
    finite = jnp.isfinite(value) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
    )
    accept = finite & (state.step < total_steps)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda n, o: jnp.where(accept, n, o), new, old
    )
    new_state = OptState(
        eqx.combine(keep(new_trainable, trainable), static),
        keep(opt_state, state.opt_state),
        state.step + (state.step < total_steps).astype(jnp.int32),
    )
    return new_state, ChunkInfo(-value, finite)


def _run_chunk(
    problem: Problem,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
    total_steps: jax.Array,
    learning_rate_scale: jax.Array,
    state: OptState,
    key: jax.Array,
) -> tuple[OptState, ChunkInfo]:
    keys = jax.random.split(key, settings.chunk_size)
    arrays, static = eqx.partition(state, eqx.is_array)

    def body(carry: OptState, step_key: jax.Array) -> tuple[OptState, ChunkInfo]:
        new_state, info = _step(
            problem,
            optimizer,
            settings,
            total_steps,
            learning_rate_scale,
            eqx.combine(carry, static),
            step_key,
        )
        return eqx.filter(new_state, eqx.is_array), info

    arrays, info = jax.lax.scan(body, arrays, keys)
    return eqx.combine(arrays, static), info


run_chunk: Callable[..., tuple[OptState, ChunkInfo]] = eqx.filter_jit(_run_chunk)
"""The compiled chunk: ``run_chunk(problem, optimizer, settings, total, lr_scale, state, key)``.

``lr_scale`` multiplies every update (the stop rule's annealing stages); ``total`` masks steps
past the requested count."""


@dataclass
class StopRule:
    """When to stop, from the per-step ELBO estimates of each chunk.

    After chunk k with mean ELBO m_k and standard error e_k, the chunk is *flat* when

        |m_k - m_{k-1}| < max(tol |m_k|, 2 sqrt(e_k^2 + e_{k-1}^2)),

    i.e. the change is below the relative tolerance (Stan's ADVI rule, Kucukelbir et al. 2017)
    or indistinguishable from Monte Carlo noise. After ``patience`` flat chunks in a row the
    rule moves to the next annealing stage (the learning rate times ``anneal_factor``), which
    shrinks the stationary jitter of stochastic optimisation; it has converged when the last
    stage goes flat. With ``stages=1`` it is a plain relative-change rule.
    """

    tol: float
    stages: int = 3
    anneal_factor: float = 0.1
    patience: int = 3
    _previous: tuple[float, float] | None = None
    _flat: int = 0
    stage: int = 0

    @property
    def learning_rate_scale(self) -> float:
        """Factor applied to every update in the current stage."""
        return self.anneal_factor**self.stage

    def update(self, chunk_elbos: np.ndarray) -> bool:
        """Record one chunk's finite per-step ELBO estimates; return True once converged."""
        finite = chunk_elbos[np.isfinite(chunk_elbos)]
        if finite.size < 2:
            return False
        mean = float(np.mean(finite))
        stderr = float(np.std(finite, ddof=1) / np.sqrt(finite.size))
        if self._previous is not None:
            previous_mean, previous_stderr = self._previous
            threshold = max(self.tol * abs(mean), 2.0 * np.hypot(stderr, previous_stderr))
            self._flat = self._flat + 1 if abs(mean - previous_mean) < threshold else 0
        self._previous = (mean, stderr)
        if self._flat < self.patience:
            return False
        if self.stage + 1 >= self.stages:
            return True
        self.stage += 1
        self._flat = 0
        self._previous = None
        return False
