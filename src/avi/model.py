"""Trace a NumPyro model once and expose a pure log joint density over flat latent vectors.

The model is run a single time on the user's arguments to find

* the *data plate*: the plate that holds the local latent sites and the observed sites
  (overridable by name),
* the *global latents* theta (latent sites outside the data plate),
* the *local latents* z_n (latent sites inside it), with their per-datum shapes,
* the observed sites and the *per-datum arguments* (arrays whose leading axis has the data
  plate's size).

Every latent site is fitted in unconstrained space, as ADVI does: with
``T = biject_to(support)`` and unconstrained ``u``, the density that is integrated is

    log p(x, T(u)) + log |det J_T(u)|.

:func:`log_joint` evaluates that density for one draw of the flat global vector
``theta_u`` (shape ``(D_g,)``) and the flat local matrix ``z_u`` (shape ``(B, D_l)``) on a batch
of ``B`` data, scaling every term inside the data plate by ``N / B`` so that the result is an
unbiased estimate of the full-data log joint (stochastic VI, Hoffman et al. 2013).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.infer.initialization import init_to_uniform

from avi.errors import DataError, ModelError

Model = Callable[..., Any]


@dataclass(frozen=True)
class SiteLayout:
    """Where one latent site lives in the flat variational vectors.

    Attributes:
        name: the NumPyro site name.
        shape: constrained value shape; for a local site, of one datum (data plate removed).
        unconstrained_shape: shape of the unconstrained value, per datum for a local site.
        event_dim: number of event dimensions of the site's distribution.
        plate_axis: for a local site, the axis of the data plate in the full value; else None.
        offset: first index of the site in the flat (per-datum) unconstrained vector.
        size: number of unconstrained coordinates (per datum for a local site).
    """

    name: str
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    event_dim: int
    plate_axis: int | None
    offset: int
    size: int


@dataclass(frozen=True)
class ModelLayout:
    """The static description of a traced model; hashable, so compiled programs can be reused.

    Attributes:
        plate: name of the data plate.
        num_data: N, the data plate's size for the traced arguments.
        globals: layouts of the global latent sites, in model order.
        locals: layouts of the local latent sites, in model order.
        observed: names of the observed sites inside the data plate.
        per_datum_args: positions of the positional arguments that are per-datum arrays.
        per_datum_kwargs: names of the keyword arguments that are per-datum arrays.
    """

    plate: str
    num_data: int
    globals: tuple[SiteLayout, ...]
    locals: tuple[SiteLayout, ...]
    observed: tuple[str, ...]
    per_datum_args: tuple[int, ...]
    per_datum_kwargs: tuple[str, ...]

    @property
    def global_dim(self) -> int:
        """D_g: the number of unconstrained global coordinates."""
        return sum(s.size for s in self.globals)

    @property
    def local_dim(self) -> int:
        """D_l: the number of unconstrained local coordinates of one datum."""
        return sum(s.size for s in self.locals)


@dataclass(frozen=True)
class TracedModel:
    """A model traced on concrete arguments: its layout plus what is not hashable.

    Attributes:
        model: the user's NumPyro model.
        layout: the static layout.
        supports: site name -> NumPyro constraint of every latent site.
        observed_values: observed in-plate site name -> array with the data axis first.
        trace: the NumPyro trace of the run (sites and plates), for structure analysis.
    """

    model: Model
    layout: ModelLayout
    supports: Mapping[str, constraints.Constraint]
    observed_values: Mapping[str, np.ndarray]
    trace: Mapping[str, Any]


def _describe_argument(position: int | str) -> str:
    return f"argument {position}" if isinstance(position, int) else f"keyword argument '{position}'"


def _iterate_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]):
    yield from enumerate(args)
    yield from kwargs.items()


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) >= 0


VALIDATION_BLOCK = 1 << 20
"""Rows checked at a time, so that a memory-mapped argument is never read whole."""


def validate_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Reject arrays holding NaN or inf, naming the argument.

    Raises:
        DataError: an argument holds a non-finite value.
    """
    for position, value in _iterate_arguments(args, kwargs):
        if not _is_array(value) or not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
            continue
        blocks = range(0, len(value), VALIDATION_BLOCK) if np.ndim(value) else [None]
        for start in blocks:
            block = np.asarray(value if start is None else value[start : start + VALIDATION_BLOCK])
            finite = np.isfinite(block)
            if finite.all():
                continue
            bad = np.argwhere(~finite)[0] + np.eye(1, finite.ndim, 0, dtype=int)[0] * (start or 0)
            raise DataError(
                f"{_describe_argument(position)} holds non-finite value(s) (NaN or inf), first "
                f"at index {tuple(int(i) for i in bad)}. "
                "Remove or impute them; for missing observations, pass a boolean mask to the "
                "model and use `numpyro.handlers.mask` or `dist.mask(...)` on the likelihood."
            )


def _leading_lengths(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    parts = [
        f"{_describe_argument(position)}: {np.shape(value)[0]}"
        for position, value in _iterate_arguments(args, kwargs)
        if _is_array(value) and np.ndim(value) >= 1
    ]
    return ", ".join(parts)


def run_trace(model: Model, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Run the model once under a fixed seed and return its NumPyro trace.

    Latent values are drawn as NumPyro's ``init_to_uniform`` does, so improper priors trace too.

    Raises:
        ModelError: the model failed on these arguments; the message lists the leading
            lengths of the array arguments, the usual culprit.
    """
    try:
        seeded = handlers.seed(model, rng_seed=0)
        initialised = handlers.substitute(seeded, substitute_fn=init_to_uniform)
        return handlers.trace(initialised).get_trace(*args, **kwargs)
    except Exception as error:  # the user's code can raise anything; we add context
        lengths = _leading_lengths(args, kwargs)
        hint = (
            f" Leading lengths of the array arguments: {lengths}. Per-datum arguments must all "
            "have the data plate's size along their first axis."
            if lengths
            else ""
        )
        raise ModelError(
            f"Running the model on the given arguments failed: {type(error).__name__}: {error}.{hint}"
        ) from error


def _plate_names(site: Mapping[str, Any]) -> list[str]:
    return [frame.name for frame in site["cond_indep_stack"]]


def _is_latent(site: Mapping[str, Any]) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _check_sites(trace: Mapping[str, Any]) -> None:
    for name, site in trace.items():
        if site["type"] == "param":
            raise ModelError(
                f"Site '{name}' is a numpyro.param: avi fits Bayesian models, where every "
                "unknown has a prior. Give it a prior with numpyro.sample, or pass it as an argument."
            )
        if _is_latent(site) and site["fn"].support.is_discrete:
            raise ModelError(
                f"Latent site '{name}' is discrete ({type(site['fn']).__name__}): enumeration of "
                "discrete latents is not supported. Marginalise it out of the model (sum its "
                "values into the likelihood, e.g. with a MixtureSameFamily), or use a continuous "
                "relaxation such as RelaxedBernoulli or a Dirichlet/Gumbel-softmax."
            )


def _choose_plate(trace: Mapping[str, Any], plate: str | None) -> str:
    """Find the data plate: holds latent and observed sites; the outermost such if nested."""
    plate_sites: dict[str, list[Mapping[str, Any]]] = {}
    for site in trace.values():
        if site["type"] == "sample":
            for name in _plate_names(site):
                plate_sites.setdefault(name, []).append(site)
    if plate is not None:
        if plate not in plate_sites:
            known = ", ".join(f"'{p}'" for p in plate_sites) or "none"
            raise ModelError(f"plate='{plate}' is not a plate of the model (its plates: {known}).")
        return plate
    if not plate_sites:
        raise ModelError(
            "The model has no numpyro.plate. Put the per-datum sites (local latents and "
            "observations) inside `with numpyro.plate('data', N):` so that avi can tell "
            "local from global latents."
        )
    candidates = [
        name
        for name, sites in plate_sites.items()
        if any(_is_latent(s) for s in sites) and any(s["is_observed"] for s in sites)
    ]
    if not candidates:
        candidates = [n for n, sites in plate_sites.items() if any(s["is_observed"] for s in sites)]
    outer = [
        name
        for name in candidates
        if not any(
            other != name
            and {id(s) for s in plate_sites[name]} < {id(s) for s in plate_sites[other]}
            for other in candidates
        )
    ]
    if len(outer) != 1:
        names = ", ".join(f"'{p}'" for p in (outer or list(plate_sites)))
        raise ModelError(
            f"Cannot tell which plate is the data plate: candidates {names}. "
            "Name it with avi.fit(..., plate='name')."
        )
    return outer[0]


def _plate_axis(site: Mapping[str, Any], plate: str) -> int:
    frame = next(f for f in site["cond_indep_stack"] if f.name == plate)
    batch_ndim = jnp.ndim(site["value"]) - len(site["fn"].event_shape)
    return batch_ndim + frame.dim


def _layout_sites(sites: list[Mapping[str, Any]], plate: str | None) -> tuple[SiteLayout, ...]:
    layouts = []
    offset = 0
    for site in sites:
        full_shape = tuple(jnp.shape(site["value"]))
        transform = biject_to(site["fn"].support)
        full_unconstrained = tuple(transform.inverse_shape(full_shape))
        if plate is None:
            axis, shape, ushape = None, full_shape, full_unconstrained
        else:
            axis = _plate_axis(site, plate)
            shape = full_shape[:axis] + full_shape[axis + 1 :]
            ushape = full_unconstrained[:axis] + full_unconstrained[axis + 1 :]
        size = math.prod(ushape)
        layouts.append(
            SiteLayout(
                name=site["name"],
                shape=shape,
                unconstrained_shape=ushape,
                event_dim=len(site["fn"].event_shape),
                plate_axis=axis,
                offset=offset,
                size=size,
            )
        )
        offset += size
    return tuple(layouts)


def _per_datum(value: Any, num_data: int) -> bool:
    return _is_array(value) and np.ndim(value) >= 1 and np.shape(value)[0] == num_data


def trace_model(
    model: Model,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    plate: str | None = None,
) -> TracedModel:
    """Trace ``model(*args, **kwargs)`` once and describe its sites.

    Args:
        model: a NumPyro model.
        args: positional arguments of the model.
        kwargs: keyword arguments of the model.
        plate: name of the data plate, if the automatic choice must be overridden.

    Returns:
        The traced model.

    Raises:
        DataError: non-finite data.
        ModelError: no usable plate, a discrete latent, a numpyro.param, or a failing model.
    """
    kwargs = dict(kwargs or {})
    validate_arguments(args, kwargs)
    trace = run_trace(model, args, kwargs)
    _check_sites(trace)
    plate = _choose_plate(trace, plate)
    plate_message = trace.get(plate)
    if plate_message is not None and plate_message["type"] == "plate":
        size, subsample_size = plate_message["args"]
        if subsample_size is not None and subsample_size != size:
            raise ModelError(
                f"The data plate '{plate}' sets subsample_size={subsample_size}: avi draws the "
                "minibatches itself. Remove subsample_size and pass avi.fit(..., batch_size=...)."
            )
    in_plate = [s for s in trace.values() if s["type"] == "sample" and plate in _plate_names(s)]
    num_data = next(f.size for f in in_plate[0]["cond_indep_stack"] if f.name == plate)
    latent_global = [s for s in trace.values() if _is_latent(s) and plate not in _plate_names(s)]
    latent_local = [s for s in in_plate if _is_latent(s)]
    observed = [s for s in in_plate if s["is_observed"]]
    layout = ModelLayout(
        plate=plate,
        num_data=int(num_data),
        globals=_layout_sites(latent_global, None),
        locals=_layout_sites(latent_local, plate),
        observed=tuple(s["name"] for s in observed),
        per_datum_args=tuple(i for i, a in enumerate(args) if _per_datum(a, num_data)),
        per_datum_kwargs=tuple(k for k, a in kwargs.items() if _per_datum(a, num_data)),
    )
    observed_values = {
        s["name"]: np.moveaxis(np.asarray(s["value"]), _plate_axis(s, plate), 0)
        for s in observed
        if jnp.ndim(s["value"]) > 0
    }
    supports = {s["name"]: s["fn"].support for s in latent_global + latent_local}
    return TracedModel(model, layout, supports, observed_values, trace)


def check_minibatchable(traced: TracedModel) -> None:
    """Minibatches slice per-datum arguments along axis 0; the observations must follow them.

    Raises:
        ModelError: an observed site of the data plate is not laid out data-axis first, or
            no argument carries the per-datum data.
    """
    layout = traced.layout
    if not (layout.per_datum_args or layout.per_datum_kwargs):
        raise ModelError(
            f"batch_size needs per-datum arguments (arrays with {layout.num_data} rows, the "
            f"size of plate '{layout.plate}'), but none has the data along its first axis. "
            "Pass the data as model arguments with the data axis first, or fit full-batch."
        )
    for name in layout.observed:
        site = traced.trace[name]
        if _plate_axis(site, layout.plate) != 0:
            raise ModelError(
                f"batch_size: observed site '{name}' has the data plate '{layout.plate}' on axis "
                f"{_plate_axis(site, layout.plate)} of its value; minibatches slice axis 0. Put "
                "the data axis first (e.g. numpyro.plate(..., dim=-2) for the inner plate)."
            )


def slice_arguments(
    layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any], index: jax.Array
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Take the rows ``index`` of every per-datum argument; others pass whole."""
    sliced_args = tuple(
        jnp.take(a, index, axis=0) if i in layout.per_datum_args else a for i, a in enumerate(args)
    )
    sliced_kwargs = {
        k: jnp.take(a, index, axis=0) if k in layout.per_datum_kwargs else a
        for k, a in kwargs.items()
    }
    return sliced_args, sliced_kwargs


def unflatten_globals(layout: ModelLayout, theta: jax.Array) -> dict[str, jax.Array]:
    """Split the flat unconstrained global vector (D_g,) into site arrays."""
    return {
        s.name: theta[s.offset : s.offset + s.size].reshape(s.unconstrained_shape)
        for s in layout.globals
    }


def unflatten_locals(layout: ModelLayout, z: jax.Array) -> dict[str, jax.Array]:
    """Split the flat unconstrained local matrix (B, D_l) into site arrays in model layout."""
    values = {}
    for s in layout.locals:
        block = z[:, s.offset : s.offset + s.size].reshape((z.shape[0],) + s.unconstrained_shape)
        values[s.name] = jnp.moveaxis(block, 0, s.plate_axis)
    return values


def _is_identity_support(support: constraints.Constraint) -> bool:
    return support is constraints.real or (
        isinstance(support, constraints.independent) and support.base_constraint is constraints.real
    )


def constrained_trace(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """Run the model at the constrained values T(theta), T(z) of a batch of B = z.shape[0] data.

    On a batch smaller than the data, the data plate's indices are substituted by arange(B), so
    that a plate whose size the model takes from its arguments and one declared with N both
    have B entries.

    Returns:
        The trace, and for every constrained latent site its log|det J| with the site's batch
        shape (unconstrained sites have none).
    """
    batch_size = z.shape[0]
    unconstrained = {**unflatten_globals(layout, theta), **unflatten_locals(layout, z)}
    log_dets: dict[str, jax.Array] = {}

    def constrain(site: Mapping[str, Any]) -> jax.Array | None:
        if site["type"] != "sample" or site["name"] not in unconstrained:
            return None
        u = unconstrained[site["name"]]
        support = site["fn"].support
        if _is_identity_support(support):
            return u
        transform = biject_to(support)
        value = transform(u)
        log_det = transform.log_abs_det_jacobian(u, value)
        event_dim = len(site["fn"].event_shape)
        log_dets[site["name"]] = sum_rightmost(
            log_det, jnp.ndim(log_det) - jnp.ndim(value) + event_dim
        )
        return value

    substituted = handlers.substitute(handlers.seed(model, rng_seed=0), substitute_fn=constrain)
    if batch_size != layout.num_data:
        substituted = handlers.substitute(substituted, data={layout.plate: jnp.arange(batch_size)})
    return handlers.trace(substituted).get_trace(*args, **kwargs), log_dets


def log_joint(
    model: Model,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
) -> jax.Array:
    """Unbiased estimate of log p(x, T(theta), T(z)) + log|det J| on a batch.

    Args:
        model: the NumPyro model.
        layout: its layout from :func:`trace_model`.
        args: positional arguments, per-datum ones already sliced to the batch.
        kwargs: keyword arguments, per-datum ones already sliced to the batch.
        theta: flat unconstrained globals, shape (D_g,).
        z: flat unconstrained locals of the batch, shape (B, D_l).

    Returns:
        A scalar: global terms plus (N / B) times the sum of the batch's in-plate terms.
    """
    batch_size = z.shape[0]
    trace, log_dets = constrained_trace(model, layout, args, kwargs, theta, z)
    declared_size = trace[layout.plate]["args"][0] if layout.plate in trace else batch_size
    data_scale = layout.num_data / declared_size
    total = jnp.zeros(())
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        scale = 1.0 if site["scale"] is None else site["scale"]
        if layout.plate in _plate_names(site):
            scale = scale * data_scale
        term = jnp.sum(site["fn"].log_prob(site["value"]))
        if name in log_dets:
            term = term + jnp.sum(log_dets[name])
        total = total + scale * term
    return total


def per_datum_features(
    traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> np.ndarray:
    """The encoder's raw input: each datum's per-datum arguments and observed values, flattened.

    Observed values that are the same array as a per-datum argument are taken once.

    Returns:
        (N, F) float array, N the data plate's size for these arguments.
    """
    layout = traced.layout
    num_data = layout.num_data
    columns: list[np.ndarray] = [
        np.asarray(args[i], dtype=np.float32).reshape(num_data, -1) for i in layout.per_datum_args
    ]
    columns += [
        np.asarray(kwargs[k], dtype=np.float32).reshape(num_data, -1)
        for k in layout.per_datum_kwargs
    ]
    for value in traced.observed_values.values():
        column = np.asarray(value, dtype=np.float32).reshape(num_data, -1)
        if not any(c.shape == column.shape and np.array_equal(c, column) for c in columns):
            columns.append(column)
    if not columns:
        return np.zeros((num_data, 0), dtype=np.float32)
    return np.concatenate(columns, axis=1)
