"""The factors of new data: compiled programs built once per argument shapes (``fit.posterior``).

For new data x'_1..x'_M an amortized fit gives each datum its factor in one encoder pass,

    lambda_m = f_phi(s(x'_m)),    s(x) = (x - mu) / sigma,

s the standardization fixed from the training data (:class:`avi.data.prepare.FeatureScaling`)
and x'_m the datum's per-datum arguments and observed values, flattened (the columns of
:func:`avi.data.rows.per_datum_features`). Everything that depends only on the arguments' shapes
and non-array values is built on the first call with them and reused (:class:`NewDataCache`):

* the check that the model has the fitted sites there (the model is run once, eagerly);
* the column plan: which argument or observed site each feature column comes from. As in
  training, an observed value equal to an earlier column (``obs=x`` with ``x`` an argument) is
  not repeated; which ones are is decided by value at the first call, and every later call
  verifies it inside the program (a plan the new values contradict is rebuilt);
* the features program (:func:`features_program`): the model traced under ``jax.jit`` once, the
  observed values read off its trace, the columns stacked and standardized, compiled.

The encoder pass (:func:`encode`) is compiled per shape too, and runs in chunks of ``CHUNK``
data (``lax.map``): the encoder's hidden activations take O(CHUNK x width) memory whatever M
is, and stay in the processor's cache, which makes the pass several times faster than one
vmap over 10^6 data. Grouped models (:mod:`avi.data.groups`) and a standardization kept in
another precision than float32 build their features on the host instead, running the model on
every call (the former path). (A model that cannot run under ``jax.jit`` cannot be fitted.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.data.groups import GroupedModel
from avi.data.prepare import FeatureScaling
from avi.data.rows import per_datum_features
from avi.families import Family
from avi.families.protocol import LocalData
from avi.model import TracedModel, plate_axis, run_trace, trace_model, validate_arguments

CHUNK = 1024
"""Data per step of the compiled encoder pass: its activations (CHUNK x width floats per layer)
stay in a core's L2 cache; 1024 to 16384 measured alike, 2^18 and one vmap over 10^6 data
two to four times slower (MLP width 16, 2 CPU cores)."""

CACHE_SIZE = 16
"""Argument signatures whose features programs a fit keeps; the least recently used goes first."""

Source = tuple[str, int | str]
"""Where a feature column comes from: ("arg", position), ("kwarg", name) or ("site", name)."""

Features = Callable[[Sequence[Any], Mapping[str, Any]], tuple[jax.Array, jax.Array]]
"""(arguments, keyword arguments) -> ((M, F) standardized features, whether the plan held)."""


@dataclass(frozen=True)
class ColumnPlan:
    """Which argument or observed site each raw feature column comes from, in
    :func:`avi.data.rows.per_datum_features`' order.

    Attributes:
        columns: the sources of the columns, in order.
        repeated: observed sites left out, each with the index of the earlier column that
            held its values at the first call.
        axes: each observed site's data-plate axis.
    """

    columns: tuple[Source, ...]
    repeated: tuple[tuple[str, int], ...]
    axes: Mapping[str, int]


def _value(source: Source, args: Sequence[Any], kwargs: Mapping[str, Any], trace: Any) -> Any:
    kind, at = source
    if kind == "arg":
        return args[at]
    if kind == "kwarg":
        return kwargs[at]
    return trace[at]["value"]


def column_plan(traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]) -> ColumnPlan:
    """The plan of :func:`avi.data.rows.per_datum_features` on these (eagerly traced) data:
    per-datum arguments, then keyword arguments, then each observed value of the data plate
    unless it equals an earlier column of the same shape."""
    layout = traced.layout
    columns: list[Source] = [("arg", i) for i in layout.per_datum_args]
    columns += [("kwarg", k) for k in layout.per_datum_kwargs]
    values = [np.asarray(_value(s, args, kwargs, None), np.float32) for s in columns]
    values = [v.reshape(layout.num_data, -1) for v in values]
    repeated = []
    for name, value in traced.observed_values.items():
        column = np.asarray(value, dtype=np.float32).reshape(layout.num_data, -1)
        earlier = next(
            (j for j, c in enumerate(values) if c.shape == column.shape and np.array_equal(c, column)),
            None,
        )
        if earlier is None:
            columns.append(("site", name))
            values.append(column)
        else:
            repeated.append((name, earlier))
    axes = {name: plate_axis(traced.trace[name], layout.plate) for name in traced.observed_values}
    return ColumnPlan(tuple(columns), tuple(repeated), axes)


def features_program(
    model: Any, plate: str, num_data: int, plan: ColumnPlan, scaling: FeatureScaling
) -> Features:
    """The compiled features of new data: (x' - mu) / sigma, x' the plan's columns.

    The model runs under ``jax.jit`` (traced once per shapes) for the observed values; XLA keeps
    only what the columns need. Besides the features the program returns whether the plan
    still holds: every left-out observed value equals its column, every kept one differs from
    each earlier column of its shape.
    """
    mean, std = jnp.asarray(scaling.mean), jnp.asarray(scaling.std)

    def column(value: jax.Array, source: Source) -> jax.Array:
        if source[0] == "site":
            value = jnp.moveaxis(value, plan.axes[source[1]], 0)
        return jnp.asarray(value).astype(jnp.float32).reshape(num_data, -1)

    def program(
        args: Sequence[Any], kwargs: Mapping[str, Any], mean: jax.Array, std: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        trace = run_trace(model, args, kwargs) if plan.axes else None
        columns = [column(_value(s, args, kwargs, trace), s) for s in plan.columns]
        holds = jnp.asarray(True)
        for j, (source, value) in enumerate(zip(plan.columns, columns, strict=True)):
            if source[0] == "site":
                for earlier in columns[:j]:
                    if earlier.shape == value.shape:
                        holds &= jnp.any(earlier != value)
        for name, j in plan.repeated:
            value = column(trace[name]["value"], ("site", name))
            holds &= value.shape == columns[j].shape and jnp.all(value == columns[j])
        if not columns:
            raw = jnp.zeros((num_data, 0), jnp.float32)
        else:
            raw = jnp.concatenate(columns, axis=1)
        # XLA would divide by a broadcast std as a product with 1 / std, off by an ulp from
        # the training features (NumPy's quotient, FeatureScaling.apply); the barrier keeps
        # the quotient, so a datum's features are the same bits in training and as new data.
        std = jax.lax.optimization_barrier(jnp.broadcast_to(std, raw.shape))
        return (raw - mean) / std, holds

    compiled = eqx.filter_jit(program)
    return lambda args, kwargs: compiled(args, kwargs, mean, std)


def host_features(
    traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any], scaling: FeatureScaling
) -> np.ndarray:
    """The standardized features computed on the host from an eager trace (the former path)."""
    return scaling.apply(per_datum_features(traced, args, kwargs))


def signature(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Hashable | None:
    """What the programs of new data depend on: the arrays' shapes and dtypes and the other
    arguments' values; None when an argument is neither an array nor hashable (no reuse)."""

    def part(value: Any) -> Hashable:
        if isinstance(value, (np.ndarray, jax.Array)):
            return ("array", value.shape, str(value.dtype))
        return ("value", type(value), value)

    key = (tuple(part(a) for a in args), tuple((k, part(v)) for k, v in kwargs.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key


@dataclass
class NewDataCache:
    """Compiled features of new data by argument signature (:func:`signature`); a fit holds
    one, so that a second call with arguments of the same shapes does not run the model."""

    programs: OrderedDict[Hashable, Features] = field(default_factory=OrderedDict)

    def features(
        self,
        model: Any,
        plate: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        scaling: FeatureScaling,
        check: Callable[[TracedModel], None],
    ) -> jax.Array | np.ndarray:
        """The standardized (M, F) features of new data. On the first call with a signature
        the model is traced eagerly, ``check``-ed, and its features program compiled.

        Raises:
            DataError: non-finite data (checked on every call).
            ModelError, FamilyError: from the trace or ``check``, on the first call.
        """
        key = signature(args, kwargs)
        program = self.programs.get(key) if key is not None else None
        if program is not None:
            self.programs.move_to_end(key)
            validate_arguments(args, kwargs)
            features, holds = program(args, kwargs)
            if bool(holds):
                return features
        traced = trace_model(model, args, kwargs, plate=plate)
        check(traced)
        if isinstance(model, GroupedModel) or not (
            scaling.mean.dtype == np.float32 and scaling.std.dtype == np.float32
        ):
            return host_features(traced, args, kwargs, scaling)
        layout = traced.layout
        plan = column_plan(traced, args, kwargs)
        program = features_program(model, layout.plate, layout.num_data, plan, scaling)
        features, holds = program(args, kwargs)
        assert bool(holds), "a column plan holds on the data it was made from"
        if key is not None:
            self.programs[key] = program
            if len(self.programs) > CACHE_SIZE:
                self.programs.popitem(last=False)
        return features


def _encode(
    family: Family, params: Mapping[str, Any], data: LocalData, theta: jax.Array, chunk: int
) -> dict[str, jax.Array]:
    """lambda of every datum, the encoder run on ``chunk`` data at a time; data lacking a
    Window neighbour (``free_slot >= 0``) get NaN (no factor the encoder can give)."""
    lacking = data.free_slot >= 0
    num_data = data.features.shape[0]
    num_chunks = -(-num_data // chunk)
    padding = num_chunks * chunk - num_data

    def pad(a: jax.Array) -> jax.Array:
        widths = [(0, padding)] + [(0, 0)] * (a.ndim - 1)
        return jnp.pad(a, widths).reshape(num_chunks, chunk, *a.shape[1:])

    def chunk_params(features: jax.Array) -> dict[str, jax.Array]:
        served = LocalData(features, jnp.full(features.shape[:1], -1, jnp.int32))
        return family.local_params(params, served, None, theta=theta)

    lam = jax.lax.map(chunk_params, pad(data.features))
    lam = {k: v.reshape(num_chunks * chunk, *v.shape[2:])[:num_data] for k, v in lam.items()}
    return {
        k: jnp.where(lacking.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.nan, v)
        for k, v in lam.items()
    }


encode = eqx.filter_jit(_encode)
"""Compiled :func:`_encode` (one program per family, parameter and data shapes and chunk)."""
