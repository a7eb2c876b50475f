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
from avi.families import LocalData


@dataclass(frozen=True)
class StepSettings:
    """Static settings of a step: batch size (None: full batch), draws, estimator, chunk length."""

    batch_size: int | None
    num_particles: int
    sticking_the_landing: bool
    chunk_size: int


class OptState(NamedTuple):
    """Optimiser state between chunks.

    The family's per-datum tables (F-VI's N x D_l locations and log-scales) have an optimiser
    state of their own, so that a minibatch step gathers, updates and scatters only the batch's
    rows of the tables *and* of their optimiser moments: O(B) work, and the factors of data
    outside the batch stay exactly as they were (a lazy update, as sparse Adam does).
    """

    params: VariationalParams
    dense_state: Any
    table_state: Any
    step: jax.Array


class StreamedBatch(NamedTuple):
    """One step's minibatch gathered on the host (data streamed from a memory map).

    Attributes:
        args: position -> the batch's rows of that per-datum positional argument.
        kwargs: name -> the batch's rows of that per-datum keyword argument.
        features: (B, F) standardized encoder inputs of the batch.
    """

    args: dict[int, jax.Array]
    kwargs: dict[str, jax.Array]
    features: jax.Array


def batch_problem(problem: Problem, batch: StreamedBatch) -> Problem:
    """The problem restricted to a streamed batch: its rows stand in for the per-datum data.

    The layout keeps the full N, so the ELBO scales the batch's terms by N / B.
    """
    args = tuple(batch.args.get(i, a) for i, a in enumerate(problem.args))
    kwargs = {k: batch.kwargs.get(k, a) for k, a in problem.kwargs.items()}
    rows = batch.features.shape[0]
    local_data = LocalData(batch.features, jnp.full((rows,), -1, jnp.int32))
    return Problem(problem.model, problem.layout, problem.family, args, kwargs, local_data)


class ChunkInfo(NamedTuple):
    """Per-step diagnostics of one chunk."""

    elbo: jax.Array
    finite: jax.Array


@lru_cache(maxsize=None)
def default_optimizer(learning_rate: float = 1e-2) -> optax.GradientTransformation:
    """Adam at the given rate (cached, so that repeated fits reuse the compiled program)."""
    return optax.adam(learning_rate)


def split_tables(
    params: VariationalParams, table_keys: tuple[str, ...]
) -> tuple[VariationalParams, dict[str, jax.Array]]:
    """Separate the per-datum tables named ``table_keys`` from the rest of the parameters."""
    local = params.local
    if not table_keys:
        return params, {}
    dense = params._replace(local={k: v for k, v in local.items() if k not in table_keys})
    return dense, {k: local[k] for k in table_keys}


def merge_tables(dense: VariationalParams, tables: dict[str, jax.Array]) -> VariationalParams:
    """Inverse of :func:`split_tables`."""
    if not tables:
        return dense
    return dense._replace(local={**dense.local, **tables})


def init_state(
    params: VariationalParams, optimizer: optax.GradientTransformation, table_keys: tuple[str, ...]
) -> OptState:
    """Initial optimiser state for the given parameters.

    Leaves are made strongly typed first: a weak-typed leaf (from a Python-float fill) would
    change type after the first update and force the chunk to compile again.
    """
    params = jax.tree_util.tree_map(
        lambda leaf: jnp.array(leaf, dtype=leaf.dtype) if eqx.is_array(leaf) else leaf, params
    )
    dense, tables = split_tables(params, table_keys)
    return OptState(
        params,
        optimizer.init(eqx.filter(dense, eqx.is_inexact_array)),
        optimizer.init(tables),
        jnp.zeros((), jnp.int32),
    )


def _rows(tree: Any, index: jax.Array, num_data: int) -> Any:
    """The rows ``index`` of every leaf whose leading axis is the data axis."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf[index] if jnp.ndim(leaf) >= 1 and leaf.shape[0] == num_data else leaf,
        tree,
    )


def _scatter_rows(tree: Any, rows: Any, index: jax.Array, num_data: int) -> Any:
    """Write ``rows`` back at ``index`` into the per-datum leaves; other leaves are replaced."""
    return jax.tree_util.tree_map(
        lambda leaf, row: (
            leaf.at[index].set(row) if jnp.ndim(leaf) >= 1 and leaf.shape[0] == num_data else row
        ),
        tree,
        rows,
    )


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _step(
    problem: Problem,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
    total_steps: jax.Array,
    learning_rate_scale: jax.Array,
    state: OptState,
    key: jax.Array,
    streamed: StreamedBatch | None = None,
) -> tuple[OptState, ChunkInfo]:
    batch_key, draw_key = jax.random.split(key)
    num_data = problem.layout.num_data
    if streamed is not None:
        problem = batch_problem(problem, streamed)
        index = None
    elif settings.batch_size is None:
        index = None
    else:
        index = jax.random.randint(batch_key, (settings.batch_size,), 0, num_data)
    dense, tables = split_tables(state.params, problem.family.table_keys)
    trainable, static = eqx.partition(dense, eqx.is_inexact_array)
    if index is None:
        rows, row_state = tables, state.table_state
    else:
        rows, row_state = _rows(tables, index, num_data), _rows(state.table_state, index, num_data)

    def loss(trainable_dense: VariationalParams, table_rows: dict[str, jax.Array]) -> jax.Array:
        params = merge_tables(eqx.combine(trainable_dense, static), table_rows)
        draws = elbo_draws(
            draw_key,
            params,
            problem,
            index,
            settings.num_particles,
            settings.sticking_the_landing,
            tables_gathered=index is not None and bool(table_rows),
        )
        return -jnp.mean(draws)

    value, (dense_grads, row_grads) = jax.value_and_grad(loss, argnums=(0, 1))(trainable, rows)
    scale = lambda tree: jax.tree_util.tree_map(lambda u: learning_rate_scale * u, tree)  # noqa: E731
    dense_updates, dense_state = optimizer.update(dense_grads, state.dense_state, trainable)
    row_updates, new_row_state = optimizer.update(row_grads, row_state, rows)
    new_trainable = optax.apply_updates(trainable, scale(dense_updates))
    new_rows = optax.apply_updates(rows, scale(row_updates))
    finite = jnp.isfinite(value) & _all_finite((dense_grads, row_grads))
    accept = finite & (state.step < total_steps)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda n, o: jnp.where(accept, n, o), new, old
    )
    new_rows, new_row_state = keep((new_rows, new_row_state), (rows, row_state))
    if index is None:
        new_tables, table_state = new_rows, new_row_state
    else:
        new_tables = _scatter_rows(tables, new_rows, index, num_data)
        table_state = _scatter_rows(state.table_state, new_row_state, index, num_data)
    new_state = OptState(
        merge_tables(eqx.combine(keep(new_trainable, trainable), static), new_tables),
        keep(dense_state, state.dense_state),
        table_state,
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
    batches: StreamedBatch | None = None,
) -> tuple[OptState, ChunkInfo]:
    keys = jax.random.split(key, settings.chunk_size)
    arrays, static = eqx.partition(state, eqx.is_array)

    def body(
        carry: OptState, inputs: tuple[jax.Array, StreamedBatch | None]
    ) -> tuple[OptState, ChunkInfo]:
        step_key, streamed = inputs
        new_state, info = _step(
            problem,
            optimizer,
            settings,
            total_steps,
            learning_rate_scale,
            eqx.combine(carry, static),
            step_key,
            streamed,
        )
        return eqx.filter(new_state, eqx.is_array), info

    arrays, info = jax.lax.scan(body, arrays, (keys, batches))
    return eqx.combine(arrays, static), info


run_chunk: Callable[..., tuple[OptState, ChunkInfo]] = eqx.filter_jit(_run_chunk)
"""The compiled chunk: ``run_chunk(problem, optimizer, settings, total, lr_scale, state, key,
batches=None)``; ``batches`` stacks one :class:`StreamedBatch` per step (streamed data).

``lr_scale`` multiplies every update (the stop rule's annealing stages); ``total`` masks steps
past the requested count."""


def evaluation_index(key: jax.Array, num_data: int, batch_size: int | None) -> jax.Array | None:
    """The fixed data on which the stop rule evaluates the ELBO: all data in full-batch mode,
    else 16 B data drawn once, uniformly with replacement (O(B) work whatever N is)."""
    if batch_size is None or 16 * batch_size >= num_data:
        return None
    return jax.random.randint(key, (16 * batch_size,), 0, num_data)


def _evaluate(
    key: jax.Array, params: VariationalParams, problem: Problem, index: jax.Array | None
) -> jax.Array:
    return jnp.mean(elbo_draws(key, params, problem, index, EVALUATION_DRAWS, False))


EVALUATION_DRAWS = 4
"""Draws of the stop rule's fixed-noise ELBO evaluation."""

evaluate = eqx.filter_jit(_evaluate)
"""``evaluate(key, params, problem, index)``: the ELBO at fixed noise (same key every check)."""


@dataclass
class StopRule:
    """Reduce-on-plateau stop rule on a common-random-numbers ELBO.

    After every chunk the ELBO is evaluated with the *same* key and the same data (all data,
    or a fixed subset under minibatching), so differences between checks measure the change
    of the variational parameters, not Monte Carlo or subsampling noise. A check improves on
    the best value so far when it exceeds it by more than ``tol * |best|`` (Stan's ADVI
    relative tolerance, Kucukelbir et al. 2017). After ``patience`` checks without improvement
    the learning rate is multiplied by ``anneal_factor`` (which shrinks the stationary jitter of
    stochastic optimisation); the fit has converged when the last of ``stages`` plateaus.
    """

    tol: float
    stages: int = 3
    anneal_factor: float = 0.1
    patience: int = 3
    best: float = -np.inf
    since_best: int = 0
    stage: int = 0

    @property
    def learning_rate_scale(self) -> float:
        """Factor applied to every update in the current stage."""
        return self.anneal_factor**self.stage

    def update(self, value: float) -> bool:
        """Record one check's fixed-noise ELBO; return True once converged."""
        if not np.isfinite(value):
            return False
        if value > self.best + self.tol * abs(value):
            self.best = value
            self.since_best = 0
            return False
        self.since_best += 1
        if self.since_best < self.patience:
            return False
        if self.stage + 1 >= self.stages:
            return True
        self.stage += 1
        self.since_best = 0
        return False
