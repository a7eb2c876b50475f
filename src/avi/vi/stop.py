"""Reduce-on-plateau stop rule as a pure function over an explicit state.

After every chunk of steps the runner evaluates the ELBO with the *same* key and the same data
(all data, or a fixed subset under minibatching), so that differences between checks measure
the change of the variational parameters, not Monte Carlo or subsampling noise. A check improves
on the best value so far when it exceeds it by more than ``tol * |value|`` (Stan's ADVI relative
tolerance, Kucukelbir et al. 2017). After ``patience`` checks without improvement the update
scale is multiplied by ``anneal_factor`` (which shrinks the stationary jitter of stochastic
optimisation); the rule fires when the last of ``stages`` plateaus.

The rule only says the ELBO has gone flat: a relative tolerance on a large ELBO cannot see a
global scale off by 10% (0.01 nats). The runner therefore asks the certificate
(:mod:`avi.vi.certify`) when the rule fires, and on a refusal :meth:`PlateauRule.reopen` steps
back one stage (a larger update scale) and lets the rule run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp


class StopState(NamedTuple):
    """Where the stop rule stands; part of :class:`avi.vi.State`.

    Attributes:
        best: best fixed-noise ELBO seen so far (-inf before the first check).
        since_best: checks since ``best`` last improved.
        stage: annealing stage (0 .. stages - 1).
        scale: the factor applied to every update in this stage, ``anneal_factor ** stage``.
        converged: whether the last stage has plateaued.
    """

    best: jax.Array
    since_best: jax.Array
    stage: jax.Array
    scale: jax.Array
    converged: jax.Array


@dataclass(frozen=True)
class PlateauRule:
    """Parameters of the reduce-on-plateau rule (see the module docstring).

    Attributes:
        tol: relative improvement that counts as progress.
        stages: learning-rate stages; 1 turns annealing off.
        anneal_factor: factor of the update scale between stages.
        patience: checks without improvement that end a stage.
    """

    tol: float
    stages: int = 3
    anneal_factor: float = 0.1
    patience: int = 3

    @staticmethod
    def initial_state() -> StopState:
        """The state before the first check (update scale 1)."""
        return StopState(
            best=jnp.asarray(-jnp.inf, jnp.float32),
            since_best=jnp.zeros((), jnp.int32),
            stage=jnp.zeros((), jnp.int32),
            scale=jnp.ones((), jnp.float32),
            converged=jnp.zeros((), bool),
        )

    def update(self, state: StopState, value: jax.Array | float) -> StopState:
        """Record one check's fixed-noise ELBO ``value``; a non-finite value changes nothing
        (one compiled program per rule, not an operation at a time on the host)."""
        return _update(self, state, jnp.asarray(value, jnp.float32))

    def reopen(self, state: StopState) -> StopState:
        """After a refused certificate: back one stage (a larger update scale), patience reset."""
        stage = jnp.maximum(state.stage - 1, 0)
        return state._replace(
            since_best=jnp.zeros((), jnp.int32),
            stage=stage,
            scale=jnp.asarray(self.anneal_factor, jnp.float32) ** stage,
            converged=jnp.zeros((), bool),
        )


@partial(jax.jit, static_argnums=0)
def _update(rule: PlateauRule, state: StopState, value: jax.Array) -> StopState:
    finite = jnp.isfinite(value)
    improved = finite & (value > state.best + rule.tol * jnp.abs(value))
    since_best = jnp.where(improved, 0, state.since_best + finite.astype(jnp.int32))
    plateau = since_best >= rule.patience
    last_stage = state.stage + 1 >= rule.stages
    advance = plateau & ~last_stage
    stage = state.stage + advance.astype(jnp.int32)
    return StopState(
        best=jnp.where(improved, value, state.best),
        since_best=jnp.where(advance, 0, since_best),
        stage=stage,
        scale=jnp.asarray(rule.anneal_factor, jnp.float32) ** stage,
        converged=state.converged | (plateau & last_stage),
    )
