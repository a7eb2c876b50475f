"""Grouped data: one local latent per group, its observations in another plate.

The varying-intercept radon model (Gelman and Hill 2006) is the pattern::

    with numpyro.plate("county", J):
        a = numpyro.sample("a", dist.Normal(mu, sigma_a))
    with numpyro.plate("house", len(county)):
        numpyro.sample("y", dist.Normal(a[county] + beta * floor, sigma), obs=log_radon)

Latent a_j's datum is the *group* j: the observations y_i with county_i = j, which reach it
through the index argument ``county``. :func:`find_groups` recognises the pattern from one trace
(a plate of latents without observations, an observation plate, and an integer argument of the
observations whose values index the group plate and on which the observations' dependence on
a_j is verified), and :func:`group_data` regroups the data once so that the rest of the engine
sees an ordinary model whose data plate is the group plate:

* every observation-level argument (leading axis N_obs, the observation plate's size) is sorted
  by group and padded to (J, S, ...), S the largest group's size; padding rows copy a real row
  of their group (so every log density stays finite) and the row mask (J, S) marks real rows;
* :class:`GroupedModel` calls the user's model on a batch of B groups with their rows
  flattened to B S, the index replaced by each row's position in the batch, and rewrites each
  observed site of the observation plate into a site of the group plate whose log density is
  the group's masked sum over its rows,

      log p(y_j | a_j, theta) = sum_{s < n_j} log p(y_js | a_j, theta),

  scaled like the group latents, so that the ELBO on a minibatch of B groups is the unbiased
  J / B estimate of stochastic VI (Hoffman et al. 2013).

The cost of a step is that of B S rows whatever J is; the padding costs S / mean(n_j) in memory
and full-batch work (23x on the 386 counties of the full radon data, whose largest has 765
houses).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.primitives import CondIndepStackFrame, Messenger

from avi.errors import ModelError
from avi.model.arguments import describe_argument, validate_arguments
from avi.model.trace import is_latent, plate_axis, plate_names, run_trace

ROW_MASK = "avi_row_mask"
"""Keyword argument carrying the (J, S) mask of real rows to :class:`GroupedModel`."""


@dataclass(frozen=True)
class GroupSpec:
    """How a grouped model's arguments map to groups (hashable: part of compiled programs).

    Attributes:
        group_plate: the plate of the group latents (becomes the data plate).
        observation_plate: the plate of the observations.
        group_dim: the group plate's ``dim``.
        index: the index argument (a position, or a keyword's name).
        index_name: the index argument's name, for messages.
        row_args: positions of the observation-level positional arguments (index included).
        row_kwargs: names of the observation-level keyword arguments (index included).
    """

    group_plate: str
    observation_plate: str
    group_dim: int
    index: int | str
    index_name: str
    row_args: tuple[int, ...]
    row_kwargs: tuple[str, ...]


class GroupRows(dist.Distribution):
    """The observations of B groups as one site of the group plate: each group's rows are an
    event of S rows, whose log density is the sum over its real (unmasked) rows.

    Args:
        base: the observation site's distribution, batch shape (B S,).
        mask: (B, S) real rows.
        group_dim: the group plate's dim (the batch is (B,) followed by -group_dim - 1 ones).
    """

    arg_constraints: dict = {}
    pytree_data_fields = ("base", "real")
    pytree_aux_fields = ("group_dim",)

    def __init__(self, base: dist.Distribution, mask: jax.Array, group_dim: int) -> None:
        self.base, self.real, self.group_dim = base, mask, group_dim
        batch = (mask.shape[0],) + (1,) * (-group_dim - 1)
        super().__init__(batch, (mask.shape[1], *base.event_shape), validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.independent(self.base.support, 1)

    def _rows(self, value: jax.Array) -> jax.Array:
        return value.reshape((-1, *self.base.event_shape))

    def log_prob(self, value: jax.Array) -> jax.Array:
        per_row = self.base.log_prob(self._rows(value))
        per_row = jnp.where(self.real.reshape(-1), per_row, 0.0)
        return per_row.reshape(self.real.shape).sum(-1).reshape(self.batch_shape)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        rows = self.base.sample(key, sample_shape)
        return rows.reshape(tuple(sample_shape) + self.batch_shape + self.event_shape)


class _GroupSites(Messenger):
    """Rewrite the observation plate's sites into sites of the group plate (module docstring)."""

    def __init__(self, spec: GroupSpec, mask: jax.Array) -> None:
        self.spec, self.mask = spec, mask
        self.plates: dict[str, tuple[int, int]] = {}
        super().__init__()

    def postprocess_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "plate":
            self.plates[msg["name"]] = (msg["args"][0], msg["value"].shape[0])

    def process_message(self, msg: dict[str, Any]) -> None:
        spec = self.spec
        if msg["type"] != "sample" or spec.observation_plate not in plate_names(msg):
            return
        if spec.group_plate not in self.plates:
            raise ModelError(
                f"Site '{msg['name']}' of plate '{spec.observation_plate}' comes before the group "
                f"plate '{spec.group_plate}': declare the group latents first."
            )
        group_size, group_batch = self.plates[spec.group_plate]
        rows_size, rows_batch = self.plates[spec.observation_plate]
        fn = msg["fn"]
        if tuple(fn.batch_shape) != (rows_batch,):
            raise ModelError(
                f"Site '{msg['name']}' in plate '{spec.observation_plate}' has batch shape "
                f"{tuple(fn.batch_shape)}: with groups, an observation site must have the "
                "observation plate as its only batch axis (put other axes in the event with "
                ".to_event)."
            )
        batch = GroupRows(fn, self.mask, spec.group_dim)
        msg["fn"] = batch
        if msg["value"] is not None:
            msg["value"] = jnp.reshape(msg["value"], batch.batch_shape + batch.event_shape)
        msg["cond_indep_stack"] = [
            CondIndepStackFrame(spec.group_plate, spec.group_dim, group_batch)
            if frame.name == spec.observation_plate
            else frame
            for frame in msg["cond_indep_stack"]
        ]
        scale = 1.0 if msg["scale"] is None else msg["scale"]
        # undo the observation plate's subsample factor, apply the group plate's
        msg["scale"] = scale * (rows_batch / rows_size) * (group_size / group_batch)


@dataclass(frozen=True)
class GroupedModel:
    """The user's grouped model as a model over groups (module docstring).

    Called with the regrouped arguments of :func:`regroup` (observation-level arrays of shape
    (B, S, ...), the row mask as keyword ``avi_row_mask``); hashable, so compiled programs are
    reused across fits of one model.

    Attributes:
        model: the user's NumPyro model.
        spec: where its groups are.
    """

    model: Any
    spec: GroupSpec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        spec = self.spec
        mask = jnp.asarray(kwargs.pop(ROW_MASK))
        groups, slots = mask.shape
        rows = groups * slots
        position = jnp.repeat(jnp.arange(groups, dtype=jnp.int32), slots)

        def flat(value: Any, at: int | str) -> Any:
            if at == spec.index:
                return position
            return jnp.reshape(value, (rows, *jnp.shape(value)[2:]))

        args = tuple(flat(a, i) if i in spec.row_args else a for i, a in enumerate(args))
        kwargs = {k: flat(a, k) if k in spec.row_kwargs else a for k, a in kwargs.items()}
        substituted = handlers.substitute(
            self.model, data={spec.observation_plate: jnp.arange(rows)}
        )
        with _GroupSites(spec, mask):
            return substituted(*args, **kwargs)

    def regroup(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The user's arguments (of training or of new groups) as this model's arguments;
        arguments regrouped already (holding the row mask) are returned as they are."""
        if ROW_MASK in kwargs:
            return tuple(args), dict(kwargs)
        return regroup(self.model, self.spec, args, kwargs)


def _argument(args: Sequence[Any], kwargs: Mapping[str, Any], at: int | str) -> Any:
    return args[at] if isinstance(at, int) else kwargs[at]


def _group_count(model: Any, spec: GroupSpec, args: Sequence[Any], kwargs: Mapping[str, Any]):
    trace = run_trace(model, args, kwargs)
    return int(trace[spec.group_plate]["args"][0])


def regroup(
    model: Any, spec: GroupSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Sort the observation-level arguments by group and pad them to (J, S, ...).

    Group j's rows keep their order; slots past its n_j rows copy its first row (any real
    row for an empty group) and are masked out.

    Raises:
        ModelError: an index value outside [0, J), J the group plate's size.
    """
    num_groups = _group_count(model, spec, args, kwargs)
    index = np.asarray(_argument(args, kwargs, spec.index)).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= num_groups):
        raise ModelError(
            f"The group index '{spec.index_name}' holds values in [{index.min()}, {index.max()}] "
            f"but plate '{spec.group_plate}' has {num_groups} groups: give ids 0..J-1 with J "
            "the group count (for new groups, 0..k-1 and k)."
        )
    counts = np.bincount(index, minlength=num_groups)
    slots = max(1, int(counts.max(initial=0)))
    order = np.argsort(index, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(slots)
    within = np.where(slot[None, :] < counts[:, None], slot[None, :], 0)
    position = np.where(counts[:, None] > 0, starts[:, None] + within, 0)
    table = order[position] if index.size else np.zeros((num_groups, slots), np.int64)
    mask = slot[None, :] < counts[:, None]

    def pad(value: Any) -> Any:
        return np.asarray(value)[table]

    new_args = tuple(pad(a) if i in spec.row_args else a for i, a in enumerate(args))
    new_kwargs = {k: pad(a) if k in spec.row_kwargs else a for k, a in kwargs.items()}
    new_kwargs[ROW_MASK] = mask
    return new_args, new_kwargs


def group_features(
    spec: GroupSpec,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    group_level: Sequence[np.ndarray],
    observed: Mapping[str, np.ndarray],
) -> np.ndarray:
    """A set encoder's raw input: (J, S, 1 + F), channel 0 the row mask, then each row's
    observation-level arguments (the index excluded), observed values and its group's
    group-level arguments (repeated on every row).

    Args:
        spec: the groups.
        args, kwargs: regrouped arguments (:func:`regroup`).
        group_level: (J, ...) per-group arrays (the group plate's per-datum arguments).
        observed: observed site -> (J, S, ...) values.
    """
    mask = np.asarray(kwargs[ROW_MASK], dtype=np.float32)
    groups, slots = mask.shape
    columns = [mask[..., None]]
    for at in (*spec.row_args, *spec.row_kwargs):
        if at != spec.index:
            value = np.asarray(_argument(args, kwargs, at), dtype=np.float32)
            columns.append(value.reshape(groups, slots, -1))
    for value in observed.values():
        column = np.asarray(value, dtype=np.float32).reshape(groups, slots, -1)
        if not any(c.shape == column.shape and np.array_equal(c, column) for c in columns):
            columns.append(column)
    for value in group_level:
        column = np.asarray(value, dtype=np.float32).reshape(groups, 1, -1)
        columns.append(np.broadcast_to(column, (groups, slots, column.shape[-1])))
    return np.concatenate(columns, axis=-1)


def _parameter_position(model: Any, name: str) -> int | None:
    try:
        parameters = list(inspect.signature(model).parameters.values())
    except (TypeError, ValueError):
        return None
    for position, parameter in enumerate(parameters):
        if parameter.name == name and parameter.kind in (
            parameter.POSITIONAL_ONLY,
            parameter.POSITIONAL_OR_KEYWORD,
        ):
            return position
    return None


def _argument_name(model: Any, at: int | str) -> str:
    if isinstance(at, str):
        return at
    try:
        parameters = list(inspect.signature(model).parameters)
    except (TypeError, ValueError):
        parameters = []
    return parameters[at] if at < len(parameters) else describe_argument(at)


def _candidates(
    args: Sequence[Any], kwargs: Mapping[str, Any], rows: int, groups: int
) -> list[int | str]:
    """Integer arrays of the observations' length whose values index ``groups`` groups."""
    found: list[int | str] = []
    for at, value in [*enumerate(args), *kwargs.items()]:
        if not isinstance(value, (np.ndarray, jax.Array)) or np.ndim(value) != 1:
            continue
        if len(value) != rows or not np.issubdtype(np.asarray(value).dtype, np.integer):
            continue
        values = np.asarray(value)
        if values.size and values.min() >= 0 and values.max() < groups:
            found.append(at)
    return found


def _row_log_density(
    model: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    trace: Mapping[str, Any],
    group_plate: str,
    observation_plate: str,
    group: int,
) -> np.ndarray:
    """Which observations' log densities move with group ``group``'s latents (a forward
    derivative along them at the traced point)."""
    latents = {n: s["value"] for n, s in trace.items() if is_latent(s)}
    in_group = [n for n in latents if group_plate in plate_names(trace[n])]

    def rows(step: jax.Array) -> jax.Array:
        values = dict(latents)
        for name in in_group:
            axis = plate_axis(trace[name], group_plate)
            shape = [1] * jnp.ndim(values[name])
            shape[axis] = -1
            one_hot = (jnp.arange(jnp.shape(values[name])[axis]) == group).reshape(shape)
            values[name] = values[name] + step * one_hot
        run = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=values))
        total = 0.0
        for site in run.get_trace(*args, **kwargs).values():
            if site["type"] == "sample" and site["is_observed"]:
                if observation_plate in plate_names(site):
                    log_p = site["fn"].log_prob(site["value"])
                    total = total + jnp.moveaxis(log_p, plate_axis(site, observation_plate), 0)
        return total

    _, tangent = jax.jvp(rows, (jnp.zeros(()),), (jnp.ones(()),))
    tangent = np.asarray(tangent)
    return np.abs(tangent.reshape(tangent.shape[0], -1)).sum(axis=1) > 0


def _verified(model, args, kwargs, trace, group_plate, observation_plate, index) -> bool:
    """The observations whose density moves with group j's latents are all in group j, for
    the most and the least frequent group."""
    counts = np.bincount(index)
    present = np.flatnonzero(counts)
    for group in {int(present[np.argmax(counts[present])]), int(present[np.argmin(counts[present])])}:
        try:
            moved = _row_log_density(
                model, args, kwargs, trace, group_plate, observation_plate, group
            )
        except Exception:  # the user's model may not run under a forward derivative
            return False
        if not moved.any() or (moved & (index != group)).any():
            return False
    return True


def find_groups(
    model: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None = None,
    groups: str | None = None,
) -> GroupSpec | None:
    """The groups of a grouped model, or None for a model with an ordinary data plate.

    A model is grouped when no plate holds both latents and observations (or ``plate`` names
    a plate of latents only), a plate G holds latents and an observation plate O the
    observations, and an integer argument of O's length indexes G: the observations whose
    density moves with group j's latents are exactly group j's (checked for two groups).
    ``groups`` names that argument where several could be.

    Raises:
        DataError: non-finite data.
        ModelError: ``groups`` names no suitable argument; the observations reach groups of
            two plates (crossed or nested groups); with ``groups``, latents in the observation
            plate (nested locals).
    """
    if groups is not None and not isinstance(groups, str):
        raise ModelError(
            f"groups={groups!r}: give the name of the model argument holding each "
            "observation's group index (e.g. groups='county')."
        )
    validate_arguments(args, kwargs)
    trace = run_trace(model, args, kwargs)
    latent: dict[str, list[str]] = {}
    observed: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for name, site in trace.items():
        if site["type"] == "plate":
            sizes[name] = int(site["args"][0])
        if site["type"] != "sample":
            continue
        for plate_name in plate_names(site):
            if is_latent(site):
                latent.setdefault(plate_name, []).append(name)
            elif site["is_observed"]:
                observed.setdefault(plate_name, []).append(name)
    ordinary = [p for p in latent if p in observed]
    if groups is None and (plate in ordinary if plate is not None else ordinary):
        return None
    group_plates = [p for p in latent if p not in observed and (plate is None or p == plate)]
    observation_plates = [p for p in observed if p not in latent]
    found: list[tuple[str, str, int | str]] = []
    for obs_plate in observation_plates:
        for group_plate in group_plates:
            candidates = _candidates(args, kwargs, sizes[obs_plate], sizes[group_plate])
            if groups is not None:
                position = _parameter_position(getattr(model, "__wrapped__", model), groups)
                named = groups if groups in kwargs else position
                candidates = [c for c in candidates if c == named]
            for at in candidates:
                index = np.asarray(_argument(args, kwargs, at)).astype(np.int64)
                if sizes[obs_plate] == sizes[group_plate]:
                    continue
                if _verified(model, args, kwargs, trace, group_plate, obs_plate, index):
                    found.append((group_plate, obs_plate, at))
    if not found:
        nested = [p for p in ordinary if any(p != g for g in latent if g not in observed)]
        if groups is not None and nested:
            raise ModelError(
                f"groups='{groups}': the observation plate '{nested[0]}' holds latent site(s) "
                f"{[n for n in latent[nested[0]]]} besides the observations: latents per "
                "observation inside groups (nested locals) are not supported. Without groups= "
                f"the model is fitted with '{nested[0]}' as its data plate and the group latents "
                "as globals."
            )
        if groups is not None:
            raise ModelError(
                f"groups='{groups}': no model argument of that name is an integer array of "
                "the observations' length whose values index a plate of latents (ids 0..J-1) "
                "and on which each observation's density depends only on its own group's "
                "latents. Pass the index as an integer array (np.int32), check its name, and "
                "declare the group latents in their own plate of size J."
            )
        return None
    if len({(g, o) for g, o, _ in found}) > 1 or len(found) > 1:
        described = "; ".join(
            f"plate '{g}' through {_argument_name(model, at)}" for g, _, at in found
        )
        raise ModelError(
            f"The observations reach groups in more than one way ({described}): crossed or "
            "nested groups are not supported. Name the grouping with groups='<index argument>' "
            "if the others are not groups, or treat the other plate's latents as globals."
        )
    group_plate, obs_plate, at = found[0]
    rows = sizes[obs_plate]
    row_args = tuple(i for i, a in enumerate(args) if _is_rows(a, rows))
    row_kwargs = tuple(k for k, a in kwargs.items() if _is_rows(a, rows))
    group_site = next(trace[n] for n in latent[group_plate])
    frame = next(f for f in group_site["cond_indep_stack"] if f.name == group_plate)
    return GroupSpec(
        group_plate=group_plate,
        observation_plate=obs_plate,
        group_dim=int(frame.dim),
        index=at,
        index_name=_argument_name(model, at),
        row_args=row_args,
        row_kwargs=row_kwargs,
    )


def _is_rows(value: Any, rows: int) -> bool:
    return isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) >= 1 and len(value) == rows


def group_data(
    model: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None = None,
    groups: str | None = None,
) -> tuple[Any, tuple[Any, ...], dict[str, Any], str | None]:
    """The model, arguments and data plate the engine fits: for a grouped model the
    :class:`GroupedModel`, the regrouped arguments and the group plate; otherwise the given
    ones unchanged."""
    if isinstance(model, GroupedModel):  # a fit's model, on its own or new groups' data
        return model, *model.regroup(args, kwargs), model.spec.group_plate
    spec = find_groups(model, args, kwargs, plate, groups)
    if spec is None:
        return model, tuple(args), dict(kwargs), plate
    grouped = GroupedModel(model, spec)
    new_args, new_kwargs = grouped.regroup(args, kwargs)
    return grouped, new_args, new_kwargs, spec.group_plate


def model_arguments(
    model: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """New data in the form ``model`` (a fit's model) takes: regrouped for a grouped model."""
    if isinstance(model, GroupedModel):
        return model.regroup(args, kwargs)
    return tuple(args), dict(kwargs)
