"""One step of stochastic VI as a pure function: ``init(key) -> State`` and
``step(key, state, batch) -> (State, Info)``, in the manner of BlackJAX's ``VIAlgorithm``.

A step estimates the negative ELBO on its batch with ``num_particles`` reparameterized draws
(:func:`avi.vi.elbo.elbo_draws`), differentiates it, and applies the optax transform, the update
multiplied by the stop rule's scale. A step whose loss or gradient is not finite keeps the old
parameters and optimiser state (the divergence guard) and counts in ``State.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from avi.data.batch import Batch, StreamedRows, draw_batch, put_rows, take_rows
from avi.families import LocalData
from avi.vi.elbo import elbo_draws
from avi.vi.initialize import initial_global_log_scale
from avi.vi.problem import Problem, VariationalParams
from avi.vi.state import Info, OptState, State
from avi.vi.stop import PlateauRule

DEFAULT_LEARNING_RATE = 1e-2
"""Adam's learning rate when the user gives no optimizer."""


@cache
def default_optimizer() -> optax.GradientTransformation:
    """Adam whose learning rate is held in its state (``optax.inject_hyperparams``).

    One object per process: fits that differ only in learning rate share one compiled program.
    """
    return optax.inject_hyperparams(optax.adam)(learning_rate=DEFAULT_LEARNING_RATE)


@cache
def frozen_globals(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` on the local parameters, no update of q(theta) nor of the model's learned
    parameters (``hold_globals``; cached: one compile per optimizer)."""

    def free(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: "free", tree)

    def frozen(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: "frozen", tree)

    def labels(params: Any) -> Any:
        if isinstance(params, VariationalParams):
            return VariationalParams("frozen", "frozen", free(params.local), frozen(params.model))
        return free(params)

    return optax.multi_transform({"free": optimizer, "frozen": optax.set_to_zero()}, labels)


@dataclass(frozen=True)
class Settings:
    """Static settings of a step.

    Attributes:
        batch_size: data per step; None for the full batch.
        num_particles: Monte Carlo draws per step.
        sticking_the_landing: use the sticking-the-landing estimator (Roeder et al. 2017).
        kl_warmup: steps of the KL warm-up (0: none; :mod:`avi.vi.elbo`).
        strata: the devices the data are split over; minibatches are stratified over them
            (:func:`avi.data.batch.draw_batch`), 1 for one device.
    """

    batch_size: int | None
    num_particles: int
    sticking_the_landing: bool
    kl_warmup: int = 0
    strata: int = 1


def step_keys(key: jax.Array, step: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """(batch key, draw key) of step number ``step`` of the fit whose run key is ``key``.

    Derived, not stored: a fit resumed at step k draws what an uninterrupted one would.
    """
    batch_key, draw_key = jax.random.split(jax.random.fold_in(key, step))
    return batch_key, draw_key


def restrict(problem: Problem, rows: StreamedRows) -> Problem:
    """The problem on streamed rows: they stand in for the per-datum data.

    The layout keeps the full N, so the ELBO scales the batch's terms by N / B.
    """
    args = tuple(rows.args.get(i, a) for i, a in enumerate(problem.args))
    kwargs = {k: rows.kwargs.get(k, a) for k, a in problem.kwargs.items()}
    count = rows.features.shape[0]
    local_data = LocalData(rows.features, jnp.full((count,), -1, jnp.int32))
    return Problem(
        problem.model, problem.layout, problem.family, args, kwargs, local_data, problem.model_init
    )


def split_tables(
    params: VariationalParams, table_keys: tuple[str, ...]
) -> tuple[VariationalParams, dict[str, jax.Array]]:
    """Separate the per-datum tables named ``table_keys`` from the rest of the parameters."""
    if not table_keys:
        return params, {}
    local = params.local
    dense = params._replace(local={k: v for k, v in local.items() if k not in table_keys})
    return dense, {k: local[k] for k in table_keys}


def merge_tables(dense: VariationalParams, tables: dict[str, jax.Array]) -> VariationalParams:
    """Inverse of :func:`split_tables`."""
    if not tables:
        return dense
    return dense._replace(local={**dense.local, **tables})


def _rows(tree: Any, index: jax.Array, num_data: int) -> Any:
    """The rows ``index`` of every leaf whose leading axis is the data axis."""
    return jax.tree_util.tree_map(
        lambda leaf: (
            take_rows(leaf, index) if jnp.ndim(leaf) >= 1 and leaf.shape[0] == num_data else leaf
        ),
        tree,
    )


def _scatter_rows(tree: Any, rows: Any, index: jax.Array, num_data: int) -> Any:
    """Write ``rows`` back at ``index`` into the per-datum leaves; other leaves are replaced."""
    return jax.tree_util.tree_map(
        lambda leaf, row: (
            put_rows(leaf, index, row) if jnp.ndim(leaf) >= 1 and leaf.shape[0] == num_data else row
        ),
        tree,
        rows,
    )


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _where(condition: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda n, o: jnp.where(condition, n, o), new, old)


def _strong(tree: Any) -> Any:
    """Array leaves made strongly typed: a weak-typed leaf (from a Python-float fill) would
    change type after the first update and force the compiled chunk to compile again."""
    return jax.tree_util.tree_map(
        lambda leaf: jnp.array(leaf, dtype=leaf.dtype) if eqx.is_array(leaf) else leaf, tree
    )


class Algorithm(eqx.Module):
    """Stochastic VI for one problem: the pure pair ``init`` / ``step``.

    Build it with :func:`avi.vi.build` (or let :func:`avi.fit` do it). The static parts (model,
    layout, family, optimizer, settings) are hashed by ``equinox.filter_jit``, the arrays (data,
    learning rate) traced: fits of the same shapes share one compiled program.

    Attributes:
        problem: the model and data.
        optimizer: the optax transform.
        settings: batch size, draws, estimator.
        learning_rate: the default optimizer's learning rate (held in its state); None for a
            user's optimizer, used as given.
    """

    problem: Problem
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    settings: Settings = eqx.field(static=True)
    learning_rate: jax.Array | None = None

    def initial_params(self, key: jax.Array) -> VariationalParams:
        """The family's initial locals, the model's learned parameters at its own initial
        values, and q(theta) at zero with scales from the curvature there
        (:func:`avi.vi.initialize.initial_global_log_scale`), at most 0.1."""
        layout = self.problem.layout
        local_key, probe_key = jax.random.split(key)
        family, data = self.problem.family, self.problem.local_data
        local = family.init(local_key, data, layout.local_dim, layout.global_dim)
        lam = family.local_params(local, data, None, theta=jnp.zeros(layout.global_dim))
        z = self.problem.family.factor.distribution(lam).mean
        model = dict(self.problem.model_init)
        return VariationalParams(
            global_loc=jnp.zeros(layout.global_dim),
            global_log_scale=initial_global_log_scale(probe_key, self.problem, z, model),
            local=local,
            model=model,
        )

    def init(self, key: jax.Array, params: VariationalParams | None = None) -> State:
        """The state at step 0: initial (or the given) parameters, fresh optimiser states.

        Args:
            key: PRNG key of the initialisation (encoder weights); unused when ``params`` given.
            params: start from these parameters instead.
        """
        params = _strong(self.initial_params(key) if params is None else params)
        dense, tables = split_tables(params, self.problem.family.table_keys)
        opt_state = OptState(
            self._with_learning_rate(self.optimizer.init(eqx.filter(dense, eqx.is_inexact_array))),
            self._with_learning_rate(self.optimizer.init(tables)),
        )
        return State(
            params=params,
            opt_state=opt_state,
            stop=PlateauRule.initial_state(),
            step=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32),
        )

    def _with_learning_rate(self, opt_state: Any) -> Any:
        if self.learning_rate is None:
            return opt_state
        hyperparams = {**opt_state.hyperparams, "learning_rate": self.learning_rate}
        return opt_state._replace(hyperparams=hyperparams)

    def draw_batch(self, key: jax.Array) -> Batch:
        """A batch of the in-memory data (:func:`avi.data.batch.draw_batch` with this batch size,
        stratified over the devices that hold the data)."""
        settings = self.settings
        return draw_batch(key, self.problem.layout.num_data, settings.batch_size, settings.strata)

    def step(self, key: jax.Array, state: State, batch: Batch) -> tuple[State, Info]:
        """One optimisation step on ``batch`` with the Monte Carlo draws of ``key``."""
        problem = self.problem if batch.rows is None else restrict(self.problem, batch.rows)
        index = batch.index
        num_data = problem.layout.num_data
        dense, tables = split_tables(state.params, problem.family.table_keys)
        trainable, static = eqx.partition(dense, eqx.is_inexact_array)
        table_state = state.opt_state.tables
        if index is None:
            rows, row_state = tables, table_state
        else:
            rows, row_state = _rows(tables, index, num_data), _rows(table_state, index, num_data)

        warmup = self.settings.kl_warmup
        kl_weight = (
            jnp.minimum(1.0, (state.step + 1).astype(jnp.float32) / warmup) if warmup else None
        )

        def loss(trainable_dense: VariationalParams, table_rows: dict[str, jax.Array]):
            params = merge_tables(eqx.combine(trainable_dense, static), table_rows)
            draws = elbo_draws(
                key,
                params,
                problem,
                index,
                self.settings.num_particles,
                self.settings.sticking_the_landing,
                tables_gathered=index is not None and bool(table_rows),
                kl_weight=kl_weight,
            )
            return -jnp.mean(draws)

        value, (dense_grads, row_grads) = jax.value_and_grad(loss, argnums=(0, 1))(trainable, rows)
        scale = lambda tree: jax.tree_util.tree_map(lambda u: state.stop.scale * u, tree)
        dense_updates, dense_state = self.optimizer.update(
            dense_grads, state.opt_state.dense, trainable
        )
        row_updates, new_row_state = self.optimizer.update(row_grads, row_state, rows)
        finite = jnp.isfinite(value) & _all_finite((dense_grads, row_grads))
        new_trainable = _where(
            finite, optax.apply_updates(trainable, scale(dense_updates)), trainable
        )
        dense_state = _where(finite, dense_state, state.opt_state.dense)
        new_rows, new_row_state = _where(
            finite,
            (optax.apply_updates(rows, scale(row_updates)), new_row_state),
            (rows, row_state),
        )
        if index is not None:
            new_rows = _scatter_rows(tables, new_rows, index, num_data)
            new_row_state = _scatter_rows(table_state, new_row_state, index, num_data)
        new_state = state._replace(
            params=merge_tables(eqx.combine(new_trainable, static), new_rows),
            opt_state=OptState(dense_state, new_row_state),
            step=state.step + 1,
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        return new_state, Info(-value, finite)
