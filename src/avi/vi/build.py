"""The public constructor of the pure pair: ``avi.vi.build(model, *args, ...) -> Algorithm``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avi.data.boundary import convert_arguments
from avi.data.groups import group_data
from avi.data.prepare import Prepared, device_arguments, prepare_in_memory
from avi.data.rows import per_datum_features
from avi.data.shard import gathered, num_strata, shard_rows
from avi.errors import AviError
from avi.families import Family, as_family
from avi.families.window import check_reach
from avi.model import Model
from avi.options import check_bool, check_devices, check_seed
from avi.vi.algorithm import DEFAULT_LEARNING_RATE, Algorithm, Settings, default_optimizer
from avi.vi.problem import Problem, problem_for


def algorithm_for(
    prepared: Prepared,
    family: Family,
    optimizer: optax.GradientTransformation | None,
    learning_rate: float | None,
    num_particles: int,
    sticking_the_landing: bool,
    kl_warmup: int = 0,
    strata: int = 1,
) -> Algorithm:
    """The algorithm of prepared data under a family (shared by :func:`build` and :func:`avi.fit`).

    Raises:
        AviError: both ``optimizer`` and ``learning_rate``, or a bad learning rate.
    """
    if optimizer is not None and learning_rate is not None:
        raise AviError(
            "learning_rate sets the default optimizer's rate; with optimizer= give the rate "
            "to the optimizer itself (e.g. optax.adam(1e-3)) and drop learning_rate."
        )
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise AviError(
            f"optimizer={optimizer!r} is not an optax GradientTransformation; "
            "give e.g. optax.adam(1e-2)."
        )
    if learning_rate is not None and not (
        isinstance(learning_rate, (int, float, np.integer, np.floating))
        and not isinstance(learning_rate, bool)
        and np.isfinite(learning_rate)
        and learning_rate > 0
    ):
        raise AviError(f"learning_rate={learning_rate!r}: give a positive number.")
    check_reach(getattr(family, "inputs", None), prepared.traced.layout.num_data)
    rate = None
    if optimizer is None:
        rate = jnp.asarray(
            DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate, jnp.float32
        )
    return Algorithm(
        problem=problem_for(prepared, family),
        optimizer=optimizer if optimizer is not None else default_optimizer(),
        settings=Settings(
            prepared.batch_size,
            int(num_particles),
            bool(sticking_the_landing),
            int(kl_warmup),
            strata,
        ),
        learning_rate=rate,
    )


def whole_problem(prepared: Prepared, family: Family, problem: Problem) -> Problem:
    """``problem`` on all data in this process: for data in memory, rebuilt from this
    process's own arguments (every process has them; nothing crosses processes), for streamed
    data its prefix as it is. After a fit over several processes every process then holds the
    problem one process would, without gathering the data over the network."""
    if prepared.source is not None:
        return gathered(problem)
    features = prepared.features
    if prepared.rows != slice(None):
        raw = per_datum_features(prepared.traced, prepared.args, prepared.kwargs)
        features = prepared.scaling.apply(raw)
    args, kwargs = device_arguments(prepared.args, prepared.kwargs)
    whole = dataclasses.replace(
        prepared, args=args, kwargs=kwargs, features=features, rows=slice(None)
    )
    return problem_for(whole, family)


def build(
    model: Model,
    *args: Any,
    family: Any = "amortized",
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    num_particles: int = 1,
    sticking_the_landing: bool = True,
    plate: str | None = None,
    groups: str | None = None,
    devices: Sequence[jax.Device] | None = None,
    **kwargs: Any,
) -> Algorithm:
    """Stochastic VI of ``model(*args, **kwargs)`` as the pure pair ``init`` / ``step``.

    A loop of one's own over the pair takes the same steps as :func:`avi.fit` with
    ``num_steps`` (which runs them in compiled chunks)::

        algorithm = avi.vi.build(model, x, family=avi.Amortized(avi.MLP(16)))
        init_key, run_key, _ = avi.vi.fit_keys(seed)
        state = algorithm.init(init_key)
        for k in range(num_steps):
            batch_key, draw_key = avi.vi.step_keys(run_key, k)
            state, info = algorithm.step(draw_key, state, algorithm.draw_batch(batch_key))

    Args: as :func:`avi.fit` (in-memory data; streamed data need ``avi.fit``'s reader).

    Returns:
        The :class:`avi.vi.Algorithm`, its data sharded over ``devices`` when several.
    """
    args, kwargs = convert_arguments(args, kwargs)
    model, args, kwargs, plate = group_data(model, args, kwargs, plate, groups)
    devices = check_devices(devices)
    sticking_the_landing = check_bool("sticking_the_landing", sticking_the_landing)
    family = as_family(family)
    prepared = prepare_in_memory(
        model, args, kwargs, plate, bool(family.table_keys), batch_size, devices,
        rowwise=getattr(family, "inputs", None) is None,
    )
    num_data, mesh = prepared.traced.layout.num_data, prepared.mesh
    algorithm = algorithm_for(
        prepared,
        family,
        optimizer,
        learning_rate,
        num_particles,
        sticking_the_landing,
        strata=num_strata(mesh, prepared.batch_size),
    )
    return algorithm if mesh is None else shard_rows(algorithm, num_data, mesh)


def fit_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init key, run key, check key) of the fit with this seed, as :func:`avi.fit` splits them."""
    init_key, run_key, check_key = jax.random.split(jax.random.PRNGKey(check_seed(seed)), 3)
    return init_key, run_key, check_key
