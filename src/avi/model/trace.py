"""Trace a NumPyro model once and expose a pure log joint density over flat latent vectors.

The model is run a single time on the user's arguments to find

* the *data plate*: the plate that holds the local latent sites and the observed sites
  (overridable by name),
* the *global latents* theta (latent sites outside the data plate),
* the *local latents* z_n (latent sites inside it), with their per-datum shapes,
* the observed sites and the *per-datum arguments* (arrays whose leading axis has the data
  plate's size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_uniform

from avi.errors import ModelError
from avi.model.arguments import is_per_datum, leading_lengths, validate_arguments
from avi.model.layout import Model, ModelLayout, SiteLayout, TracedModel
from avi.model.params import param_layouts


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
        lengths = leading_lengths(args, kwargs)
        text = str(error).lower()
        hint = ""
        if "invalid" in text and "parameter" in text:
            hint = (
                " A distribution's parameter is outside its domain at a point where the latents "
                "take values drawn like NumPyro's init_to_uniform (uniform in (-2, 2) in "
                "unconstrained space): e.g. the sqrt or log of a latent with a real-valued prior. "
                "Give such a latent a prior on its domain (a scale: HalfNormal, LogNormal) or "
                "map it there (jnp.exp, jax.nn.softplus)."
            )
        elif isinstance(error, TypeError) and "unexpected keyword argument" in text:
            hint = (
                " avi.fit passes the keyword arguments it does not know on to the model: check "
                "the spelling of avi.fit's options (num_steps, max_steps, batch_size, ...)."
            )
        elif lengths and any(w in text for w in ("shape", "broadcast", "size", "incompatible")):
            hint = (
                f" Leading lengths of the array arguments: {lengths}. Per-datum arguments must "
                "all have the data plate's size along their first axis."
            )
        raise ModelError(
            f"Running the model on the given arguments failed: {type(error).__name__}: {error}.{hint}"
        ) from error


def plate_names(site: Mapping[str, Any]) -> list[str]:
    return [frame.name for frame in site["cond_indep_stack"]]


def is_latent(site: Mapping[str, Any]) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _check_sites(trace: Mapping[str, Any]) -> None:
    for name, site in trace.items():
        if site["type"] == "mutable":
            raise ModelError(
                f"Site '{name}' is a numpyro mutable (a module's state, e.g. batch statistics): "
                "its value changes as the model runs, which the ELBO's gradient does not see. "
                "Build the module without state (no BatchNorm; LayerNorm has none)."
            )
        if site["type"] == "param" and not jax.tree_util.tree_leaves(site["value"]):
            raise ModelError(f"Parameter site '{name}' holds no arrays: nothing to learn.")
        if is_latent(site) and site["fn"].support.is_discrete:
            raise ModelError(
                f"Latent site '{name}' is discrete ({type(site['fn']).__name__}): enumeration of "
                "discrete latents is not supported. Marginalise it out of the model (sum its "
                "values into the likelihood, e.g. with a MixtureSameFamily), or use a continuous "
                "relaxation such as RelaxedBernoulli or a Dirichlet/Gumbel-softmax. If "
                f"'{name}' is an observation, its obs= was None: pass its data to the model."
            )


def _choose_plate(trace: Mapping[str, Any], plate: str | None) -> str:
    """Find the data plate: holds latent and observed sites; the outermost such if nested."""
    plate_sites: dict[str, list[Mapping[str, Any]]] = {}
    for site in trace.values():
        if site["type"] == "sample":
            for name in plate_names(site):
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
        if any(is_latent(s) for s in sites) and any(s["is_observed"] for s in sites)
    ]
    if not candidates:
        candidates = [n for n, sites in plate_sites.items() if any(s["is_observed"] for s in sites)]
    if not candidates:
        raise ModelError(
            f"No plate holds an observed site (plates: {', '.join(map(repr, plate_sites))}): "
            "put the observations (numpyro.sample(..., obs=data)) inside the data plate, "
            "`with numpyro.plate('data', N):`, and check that obs= is not None."
        )
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
        names = ", ".join(f"'{p}'" for p in (outer if len(outer) > 1 else candidates))
        raise ModelError(
            f"Cannot tell which plate is the data plate: candidates {names} each hold latent "
            "and observed sites, and none contains the others. Name it with plate='name' "
            "(avi.fit, avi.check, avi.compare and the command line's --plate all take it)."
        )
    return outer[0]


def _check_observed_shape(site: Mapping[str, Any], plate: str) -> None:
    """An observed value must have its distribution's shape; a broadcast would silently fit
    another likelihood (y of shape (N, 1) against a batch of N gives an N x N log density).

    Raises:
        ModelError: the value's shape broadcasts the distribution's batch and event shape to a
            larger one.
    """
    fn = site["fn"]
    expected = tuple(fn.batch_shape) + tuple(fn.event_shape)
    given = tuple(jnp.shape(site["value"]))
    try:
        joint = tuple(np.broadcast_shapes(given, expected))
    except ValueError:
        joint = None
    if joint == expected:
        return
    squeeze = (
        " Drop the trailing axis (y.reshape(-1) or y[:, 0]) or give the distribution that axis too."
        if given[-1:] == (1,)
        else ""
    )
    raise ModelError(
        f"Observed site '{site['name']}' in plate '{plate}': its value has shape {given} but "
        f"its distribution has shape {expected} (batch {tuple(fn.batch_shape)}, event "
        f"{tuple(fn.event_shape)}), so NumPyro would broadcast the likelihood to "
        f"{joint if joint is not None else 'an error'}: a different model.{squeeze}"
    )


def plate_axis(site: Mapping[str, Any], plate: str) -> int:
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
            axis = plate_axis(site, plate)
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
        ModelError: no usable plate, a discrete latent, a parameter inside the data plate, a
            mutable site, or a failing model.
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
    for site in trace.values():
        if site["type"] == "param" and plate in plate_names(site):
            raise ModelError(
                f"Parameter site '{site['name']}' is declared inside the data plate '{plate}': "
                "a point estimate per datum is not learned by an encoder nor scaled on "
                "minibatches. Make it a local latent (numpyro.sample with a prior), or declare "
                "the parameter outside the plate."
            )
    in_plate = [s for s in trace.values() if s["type"] == "sample" and plate in plate_names(s)]
    num_data = next(f.size for f in in_plate[0]["cond_indep_stack"] if f.name == plate)
    latent_global = [s for s in trace.values() if is_latent(s) and plate not in plate_names(s)]
    latent_local = [s for s in in_plate if is_latent(s)]
    observed = [s for s in in_plate if s["is_observed"]]
    for site in observed:
        _check_observed_shape(site, plate)
    layout = ModelLayout(
        plate=plate,
        num_data=int(num_data),
        globals=_layout_sites(latent_global, None),
        locals=_layout_sites(latent_local, plate),
        observed=tuple(s["name"] for s in observed),
        per_datum_args=tuple(i for i, a in enumerate(args) if is_per_datum(a, num_data)),
        per_datum_kwargs=tuple(k for k, a in kwargs.items() if is_per_datum(a, num_data)),
        params=param_layouts(trace),
    )
    observed_values = {
        s["name"]: np.moveaxis(np.asarray(s["value"]), plate_axis(s, plate), 0)
        for s in observed
        if jnp.ndim(s["value"]) > 0
    }
    supports = {s["name"]: s["fn"].support for s in latent_global + latent_local}
    return TracedModel(model, layout, supports, observed_values, trace)
