"""The problem ``avi.check`` analyses: the model's sites, its local latents and per-datum data.

The model's sample sites are read from an abstract run (``jax.eval_shape``: nothing is computed
or compiled). When the model's data plate follows its arguments, the analysis runs on the
sub-problem of its first data that the element budget allows (per-datum arguments sliced); otherwise on the full
data. Local latents are the latents with one coordinate per datum: those in the data plate and
those sampled outside it with an axis that runs along the data (say ``f ~ MultivariateNormal(0,
K)`` over all data). The per-datum data are the observed sites and arguments with a data axis:
what the optimal factor q*(z_n) of Lemma 3.1 may depend on besides the globals.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_uniform

from avi.data.groups import ROW_MASK, GroupedModel
from avi.data.rows import map_per_datum
from avi.errors import ModelError
from avi.model import Model, ModelLayout, is_latent, plate_axis, plate_names

ELEMENT_BUDGET = 2_000_000
"""Array elements (latents, observed values, per-datum arguments) the analysed problem may hold:
every datum is analysed when the whole problem fits, so windows of any length are found."""
MIN_SIZE = 1024
"""Data always analysed when the model has that many (the budget only shrinks larger problems)."""
SUB_SIZE = 32
"""Data beyond which an axis outside the data plate whose length is N is trusted as a data axis
when no run on another number of data is available."""


class Site(NamedTuple):
    """What the analysis needs of one sample site, read from an abstract run of the model.

    Attributes:
        kind: "latent", "observed" or "factor" (``numpyro.factor``).
        plates: names of the plates the site is in.
        shape: shape of its value.
        unconstrained: shape of its unconstrained value (latents), else None.
        plate_axis: axis of the data plate in its value, if it is in the plate.
        discrete: whether its value is discrete (an integer or boolean array, or the value of
            a distribution with discrete support).
    """

    kind: str
    plates: tuple[str, ...]
    shape: tuple[int, ...]
    unconstrained: tuple[int, ...] | None
    plate_axis: int | None
    discrete: bool


class _Structure(NamedTuple):
    """The sample sites of one abstract run and the data plate's size in it."""

    sites: dict[str, Site]
    size: int


@dataclass(frozen=True)
class Input:
    """A per-datum data array: an argument (``key`` its position or name) or an observed site."""

    kind: Literal["arg", "kwarg", "site"]
    key: int | str
    axis: int | None
    label: str
    discrete: bool
    valued: bool = False

    @property
    def real(self) -> bool:
        """Whether the analysis differentiates with respect to it: real data, or an integer
        argument the model uses as values only (``valued``: it runs on it as float64, so it
        indexes nothing; counts as covariates or lags)."""
        return not self.discrete or self.valued

    @property
    def along(self) -> bool:
        """Whether the array runs along the data plate (else: observed data outside it)."""
        return self.axis is not None


@dataclass(frozen=True)
class Problem:
    """The (sub-)problem analysed: arguments, the data plate and the roles of the sites.

    Attributes:
        model: the user's model.
        args: positional arguments of the analysed problem.
        kwargs: keyword arguments of the analysed problem.
        plate: the data plate's name.
        num_data: N, the user's number of data.
        size: number of data in the analysed problem.
        locals: local latent site -> its data axis (in its unconstrained value).
        disguised: local latents sampled outside the data plate.
        inputs: the per-datum data arrays.
        sites: the sample sites of the analysed problem.
    """

    model: Model
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    plate: str
    num_data: int
    size: int
    locals: dict[str, int]
    disguised: tuple[str, ...]
    inputs: tuple[Input, ...]
    sites: dict[str, Site]


def analysed_problem(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    layout: ModelLayout,
    whole: bool = False,
) -> Problem:
    """Shrink the model to the first data the element budget allows (when it follows its cut
    arguments), unless ``whole``, and classify its sites.

    Raises:
        ModelError: JAX cannot trace the model on its data.
    """
    try:
        full = _structure(model, args, kwargs, layout)
    except Exception as error:  # it ran on concrete data, so tracing is what failed
        raise ModelError(
            "avi.check traces the model with JAX on its data (as avi.fit does) and it failed: "
            f"{type(error).__name__}: {error}. Use jax.numpy, not numpy, on the model's arguments."
        ) from error
    limit = full.size if whole else analysed_size(full)
    sub = _shrunk(model, args, kwargs, layout, full, limit) if full.size > limit else None
    if sub is not None:
        structure, reference = sub, full
        args, kwargs = _head(layout, args, kwargs, limit)
    else:
        structure, reference = full, _shrunk(model, args, kwargs, layout, full, layout.num_data - 1)
        args, kwargs = tuple(args), dict(kwargs)
    locals_, observed = _per_datum_sites(structure, reference)
    along = {item.key for item in observed}
    observed += [
        Input("site", name, None, f"observed '{name}'", False)
        for name, site in structure.sites.items()
        if site.kind == "observed" and name not in along and not site.discrete
    ]
    inputs = observed + [
        Input("arg", i, 0, _argument_label(model, i), _is_discrete(args[i]),
              _used_as_values(model, args, kwargs, "arg", i))
        for i in layout.per_datum_args
    ]
    inputs += [
        Input("kwarg", k, 0, _keyword_label(k), _is_discrete(kwargs[k]),
              _used_as_values(model, args, kwargs, "kwarg", k))
        for k in layout.per_datum_kwargs
    ]
    disguised = tuple(n for n in locals_ if layout.plate not in structure.sites[n].plates)
    return Problem(
        model,
        tuple(args),
        dict(kwargs),
        layout.plate,
        layout.num_data,
        structure.size,
        locals_,
        disguised,
        tuple(inputs),
        structure.sites,
    )


def analysed_size(full: _Structure) -> int:
    """Data analysed: all of them when the problem holds at most ELEMENT_BUDGET array elements,
    else as many as the budget allows (at least MIN_SIZE)."""
    per_datum = max(elements(full.sites) / max(full.size, 1), 1.0)
    return max(MIN_SIZE, int(ELEMENT_BUDGET / per_datum))


def elements(sites: Mapping[str, Site]) -> int:
    """Array elements of the sample sites' values: the size of one evaluation of the model."""
    return sum(int(np.prod(site.shape)) for site in sites.values())


def _per_datum_sites(
    structure: _Structure, reference: _Structure | None
) -> tuple[dict[str, int], list[Input]]:
    """The local latents (site -> data axis) and the observed sites with a data axis."""
    locals_: dict[str, int] = {}
    observed: list[Input] = []
    for name, site in structure.sites.items():
        axis = _data_axis(name, site, structure.size, reference)
        if axis is None or site.kind == "factor":
            continue
        if site.kind == "latent":
            locals_[name] = axis
        else:
            observed.append(Input("site", name, axis, f"observed '{name}'", site.discrete))
    return locals_, observed


def _head(
    layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any], stop: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with every per-datum array cut to its first ``stop`` rows."""
    return map_per_datum(layout, args, kwargs, lambda a: a[:stop])


def _used_as_values(
    model: Model, args: Sequence[Any], kwargs: Mapping[str, Any], kind: str, key: int | str
) -> bool:
    """Whether an integer (not boolean) argument is used as values only: the model and its log
    densities run, in an abstract run, with it converted to float64 (an index, a gather, a
    count of groups or the value of a categorical likelihood fails).
    """
    value = (args if kind == "arg" else kwargs)[key]
    if not jnp.issubdtype(jnp.result_type(value), jnp.integer):
        return False

    def run(real: jax.Array) -> None:
        call_args, call_kwargs = list(args), dict(kwargs)
        (call_args if kind == "arg" else call_kwargs)[key] = real
        seeded = handlers.seed(model, rng_seed=0)
        initialised = handlers.substitute(seeded, substitute_fn=init_to_uniform)
        trace = handlers.trace(initialised).get_trace(*call_args, **call_kwargs)
        for site in trace.values():
            if site["type"] == "sample":
                site["fn"].log_prob(site["value"])

    try:
        jax.eval_shape(run, jax.ShapeDtypeStruct(jnp.shape(value), jnp.float64))
    except Exception:  # noqa: BLE001 (whatever an index that is not an integer raises)
        return False
    return True


def _is_discrete(value: Any) -> bool:
    """Whether an array holds integers or booleans."""
    return not jnp.issubdtype(jnp.result_type(value), jnp.inexact)


def _site(site: Mapping[str, Any], plate: str) -> Site:
    """Summarise a NumPyro sample message (see :class:`Site`)."""
    shape = tuple(jnp.shape(site["value"]))
    latent = is_latent(site)
    plates = tuple(plate_names(site))
    return Site(
        kind="factor" if isinstance(site["fn"], dist.Unit) else "latent" if latent else "observed",
        plates=plates,
        shape=shape,
        unconstrained=tuple(biject_to(site["fn"].support).inverse_shape(shape)) if latent else None,
        plate_axis=plate_axis(site, plate) if plate in plates else None,
        discrete=_is_discrete(site["value"]) or site["fn"].support.is_discrete,
    )


def _structure(
    model: Model, args: Sequence[Any], kwargs: Mapping[str, Any], layout: ModelLayout
) -> _Structure:
    """The model's sample sites on these arguments, from an abstract run (nothing is computed
    or compiled).

    Only the per-datum arrays are abstract, so sizes given as plain numbers stay concrete.
    """
    arrays: list[Any] = []
    map_per_datum(layout, args, kwargs, arrays.append)
    found: list[_Structure] = []

    def run(abstract: list[jax.Array]) -> None:
        given = iter(abstract)
        call_args, call_kwargs = map_per_datum(layout, args, kwargs, lambda _: next(given))
        seeded = handlers.seed(model, rng_seed=0)
        initialised = handlers.substitute(seeded, substitute_fn=init_to_uniform)
        trace = handlers.trace(initialised).get_trace(*call_args, **call_kwargs)
        sites = {n: _site(s, layout.plate) for n, s in trace.items() if s["type"] == "sample"}
        message = trace.get(layout.plate)
        size = message["args"][0] if message is not None and message["type"] == "plate" else -1
        found.append(_Structure(sites, int(size)))

    jax.eval_shape(run, arrays)
    return found[0]


def _shrunk(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    layout: ModelLayout,
    full: _Structure,
    size: int,
) -> _Structure | None:
    """The structure on the first ``size`` data, if the model follows its cut arguments: it runs,
    its data plate has ``size`` elements and its sites lie in the same plates; else None."""
    if size < 1:
        return None
    try:
        structure = _structure(model, *_head(layout, args, kwargs, size), layout)
    except Exception:  # noqa: BLE001 (the user's model may raise anything on arguments it rejects)
        return None
    if structure.size != size or _placement(structure) != _placement(full):
        return None
    return structure


def _placement(structure: _Structure) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each site's kind and plates: what must not change when the model is cut."""
    return {name: (site.kind, site.plates) for name, site in structure.sites.items()}


def _data_axis(name: str, site: Site, size: int, reference: _Structure | None) -> int | None:
    """The axis of a site's value that runs along the data, or None.

    Inside the data plate it is the plate's axis. Outside, it is an axis whose length is the
    number of data and follows it in the ``reference`` run on another number of data; without
    such a run, an axis whose length is the number of data, trusted only beyond SUB_SIZE data.
    """
    if site.plate_axis is not None:
        axis = site.plate_axis
        return axis if 0 <= axis < len(site.shape) and site.shape[axis] == size else None
    if reference is None:
        matches = [k for k, n in enumerate(site.shape) if n == size and size > SUB_SIZE]
    else:
        other = reference.sites.get(name)
        other_shape = () if other is None else other.shape
        matches = [
            k
            for k, (n, m) in enumerate(zip(site.shape, other_shape, strict=False))
            if len(site.shape) == len(other_shape) and n == size and m == reference.size
        ]
    if not matches:
        return None
    axis = matches[0]
    if site.unconstrained is not None and (
        len(site.unconstrained) != len(site.shape) or site.unconstrained[axis] != size
    ):
        return None
    return axis


def _keyword_label(name: str) -> str:
    return "the group's row mask" if name == ROW_MASK else f"argument '{name}'"


def _argument_label(model: Model, position: int) -> str:
    """'argument 'x'' from the model's signature, else 'argument 0'."""
    if isinstance(model, GroupedModel):
        model = model.model
    try:
        parameters = list(inspect.signature(model).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if position < len(parameters) and parameters[position].kind in positional:
        return f"argument '{parameters[position].name}'"
    return f"argument {position}"
