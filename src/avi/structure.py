"""Decide from a model's structure whether amortization can match factorized VI (``avi.check``).

Margossian and Blei (2024) characterise when amortized VI loses nothing against factorized VI.
By Lemma 3.1 (CAVI) the optimal factor of a local latent is

    q*(z_n) ∝ exp( E_{q(theta)} E_{q(z_-n)} log p(theta, z, x) ),

so it depends on exactly the data and latents that share a non-separable factor of the joint
with z_n (its prior and its children's likelihoods: its Markov blanket). Hence:

* every z_n's blanket holds only its own datum x_n (and datum n's per-datum arguments) besides
  the globals: the model is simple hierarchical (Definition 3.3) and an ideal inference function
  of x_n exists (Theorem 3.4). Verdict ``"simple-hierarchical"``, ``inputs=(0,)``.
* z_n's blanket holds the data at fixed offsets n + k, k in K, the same for every interior n (the
  saw model, Eq. 11): an ideal function of the window (x_{n+k})_{k in K} exists. Verdict
  ``"expanded-domain"``, ``inputs=sorted(K + {0})``, ready for ``avi.Window(offsets=inputs)``.
* z_n shares a non-separable factor with some z_m, m != n (a hidden Markov model, Eq. 13), or its
  blanket holds data at unbounded or index-dependent offsets (dense models such as Gaussian
  processes): no inference function of a strict subset of the data is ideal (Proposition 3.8).
  Verdict ``"not-amortizable"``, ``inputs=None``.

The blanket is read off the gradients g_s = d log p_s / dz of the per-site log densities log p_s
(one factor of the joint per sample site s), in float64, at random points of the latents drawn
as NumPyro's ``init_to_uniform`` does:

* z_n and z_m are coupled through s iff the mixed partial d^2 log p_s / dz_n dz_m != 0. One
  Hessian-vector product (``jax.jvp`` of ``jax.jacrev``) along a random direction of z_n's
  coordinates gives the whole column.
* z_n depends on datum m of a real-valued data array x (an observed site or a per-datum argument)
  through s iff d g_s(z_n) / dx_m != 0 along a random direction of row m (a Jacobian-vector
  product). For a discrete array (counts, indices), iff g_s(z_n) changes when row m is swapped
  for another datum's row (two donors: the most different row, and the one whose sum differs most).

The window is the union of the offsets found over the probed data (data at the ends lack some
neighbours, Remark 3.7; masks and discrete data can hide a dependency at some data).

The analysis runs on a small sub-problem, the first ``SUB_SIZE`` data (per-datum arguments
sliced), when the model's data plate follows its arguments; otherwise on the full data, probing
two interior data within ``WINDOW`` neighbours plus one joint perturbation of all farther rows,
so the work stays O(N). It is one compiled program per call; the sub-problem's structure is read
with ``jax.eval_shape``. A latent sampled outside the data plate with one coordinate per datum
(say ``f ~ MultivariateNormal(0, K)`` over all data) is a local latent.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_uniform

from avi.errors import ModelError
from avi.model import Model, ModelLayout, _is_latent, _plate_axis, _plate_names, trace_model

Verdict = Literal["simple-hierarchical", "expanded-domain", "not-amortizable"]
Gradients = dict[str, dict[str, jax.Array]]
"""site s -> local latent L -> d log p_s / du_L, or a per-datum summary of it."""

SUB_SIZE = 32
"""Data in the analysed sub-problem; windows must be narrower than this to be recognised."""
WINDOW = 15
"""Neighbours probed on each side when the full data must be analysed."""
RTOL = 1e-8
"""A derivative counts as non-zero above RTOL times the largest of its table (float64 noise)."""
NUM_POINTS = 2
"""Random points of the latents whose dependency patterns are pooled (avoids chance zeros)."""
MAX_SEEDS = 8
"""Random points tried to find NUM_POINTS where every gradient is finite."""
FULL_DATA_BATCH = 4
"""Full-data evaluations vectorised at once when the model cannot be shrunk (bounds memory)."""
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
"""On CPU: the program runs a few times on small arrays, so compiling fast matters, not LLVM's
optimisations."""


@dataclass(frozen=True)
class StructureReport:
    """What :func:`check` found.

    Attributes:
        verdict: ``"simple-hierarchical"`` (an ideal inference function of the datum exists,
            Theorem 3.4), ``"expanded-domain"`` (one of a fixed window of data exists, as for the
            saw model) or ``"not-amortizable"`` (none short of all the data, Proposition 3.8).
        inputs: the offsets along the data plate the encoder needs, for
            ``avi.Window(offsets=inputs)``: ``(0,)`` for a simple hierarchical model, ``None``
            when the model is not amortizable.
        explanation: the sites and the dependency that decided, in the paper's terms.
    """

    verdict: Verdict
    inputs: tuple[int, ...] | None
    explanation: str


class _Site(NamedTuple):
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

    sites: dict[str, _Site]
    size: int


@dataclass(frozen=True)
class _Input:
    """A per-datum data array: an argument (``key`` its position or name) or an observed site."""

    kind: Literal["arg", "kwarg", "site"]
    key: int | str
    axis: int
    label: str
    discrete: bool


@dataclass(frozen=True)
class _Problem:
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
    inputs: tuple[_Input, ...]
    sites: dict[str, _Site]


@dataclass(frozen=True)
class _Design:
    """Which data are probed (z_n examined) and which rows of the inputs are perturbed.

    ``window`` is None when every datum is probed and every row perturbed; otherwise the rows
    farther than ``window`` from a probe are also perturbed jointly, once per probe.
    """

    probes: tuple[int, ...]
    rows: tuple[int, ...]
    window: int | None


class _Probe(NamedTuple):
    """One row of a table: a direction or a swap centred on one datum.

    ``slot`` indexes the local latents then the real inputs (directions), or the discrete
    inputs (swaps); ``far`` perturbs every row farther than the window from ``center`` instead;
    ``donor`` picks the row swapped in (0: the most different, 1: the sum most different).
    """

    slot: int
    center: int
    far: bool = False
    donor: int = 0


class _Tables(NamedTuple):
    """What one random point gives: per-datum magnitudes max |.|, one row per probe.

    Attributes:
        finite: site -> whether all its gradients g_s are finite at the point.
        magnitude: site -> max |g_s|, the scale a swap's change is judged against.
        directions: |d g_s(z_n) / d(direction)| for the direction probes, (K1, size) arrays.
        swaps: |g_s(z_n) after the swap - g_s(z_n)| for the swap probes, (K2, size) arrays.
    """

    finite: dict[str, jax.Array]
    magnitude: dict[str, jax.Array]
    directions: Gradients
    swaps: Gradients | None


class _Edge(NamedTuple):
    """A dependency of local latent ``local`` at datum ``datum`` found in the factor ``term``.

    ``source`` is an input's label (a data dependency) or a local latent's name (a coupling);
    ``offset`` is the source's datum minus ``datum``, None for beyond the probed window.
    """

    local: str
    source: str
    term: str
    datum: int
    offset: int | None


@dataclass(frozen=True)
class _Window:
    """The data a local latent's optimal factor depends on, or why no fixed window exists.

    Attributes:
        local: the local latent site.
        links: (input label, offset) -> the factors carrying it.
        problem: why the dependency has no fixed window (dense), or None.
    """

    local: str
    links: dict[tuple[str, int], frozenset[str]]
    problem: str | None


# ----------------------------------------------------------------------------- public entry


def check(model: Model, *args: Any, plate: str | None = None, **kwargs: Any) -> StructureReport:
    """Tell whether amortized VI can reach factorized VI's optimum on ``model(*args, **kwargs)``.

    The decision follows the dependency structure of the optimal CAVI factors q*(z_n)
    (Lemma 3.1): simple hierarchical models (Definition 3.3) admit an ideal inference function
    of the datum (Theorem 3.4); models whose factors depend on the data at fixed offsets admit one
    of a window of data (expanded domain, as the saw model); models with coupled local latents or
    dense dependencies admit none short of all the data (Proposition 3.8). See the module
    docstring for how the structure is measured; names of sites play no role.

    Args:
        model: a NumPyro model with a data plate, written with jax.numpy (traceable in its
            arguments, as :func:`avi.fit` requires).
        *args: the model's positional arguments.
        plate: name of the data plate, if the automatic choice must be overridden.
        **kwargs: the model's keyword arguments.

    Returns:
        The verdict, the encoder's input offsets and an explanation.

    Raises:
        ModelError: no usable data plate, a discrete latent, a numpyro.param, a failing model,
            one that JAX cannot trace, or a log density that is not finite at random points.
        DataError: non-finite data.
    """
    layout = trace_model(model, args, kwargs, plate).layout
    with jax.enable_x64(True), numpyro.validation_enabled(False):
        problem = _analysed_problem(model, args, kwargs, layout)
        if not problem.locals:
            return _no_locals_report(problem)
        coupling, data = _dependencies(problem, _design(problem.size))
    if coupling:
        return _coupled_report(problem, coupling)
    windows = [
        _window(name, [e for e in data if e.local == name], problem.size)
        for name in problem.locals
    ]
    return _window_report(problem, windows)


# ------------------------------------------------------------------------ analysed problem


def _analysed_problem(
    model: Model, args: Sequence[Any], kwargs: Mapping[str, Any], layout: ModelLayout
) -> _Problem:
    """Shrink the model to its first SUB_SIZE data when it follows, and classify its sites.

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
    sub = _shrunk(model, args, kwargs, layout, full, SUB_SIZE) if full.size > SUB_SIZE else None
    if sub is not None:
        structure, reference = sub, full
        args, kwargs = _head(layout, args, kwargs, SUB_SIZE)
    else:
        structure, reference = full, _shrunk(model, args, kwargs, layout, full, layout.num_data - 1)
        args, kwargs = tuple(args), dict(kwargs)
    locals_, observed = _per_datum_sites(structure, reference)
    inputs = observed + [
        _Input("arg", i, 0, _argument_label(model, i), _is_discrete(args[i]))
        for i in layout.per_datum_args
    ]
    inputs += [
        _Input("kwarg", k, 0, f"argument '{k}'", _is_discrete(kwargs[k]))
        for k in layout.per_datum_kwargs
    ]
    disguised = tuple(n for n in locals_ if layout.plate not in structure.sites[n].plates)
    return _Problem(
        model, tuple(args), dict(kwargs), layout.plate, layout.num_data, structure.size,
        locals_, disguised, tuple(inputs), structure.sites,
    )


def _per_datum_sites(
    structure: _Structure, reference: _Structure | None
) -> tuple[dict[str, int], list[_Input]]:
    """The local latents (site -> data axis) and the observed sites with a data axis."""
    locals_: dict[str, int] = {}
    observed: list[_Input] = []
    for name, site in structure.sites.items():
        axis = _data_axis(name, site, structure.size, reference)
        if axis is None or site.kind == "factor":
            continue
        if site.kind == "latent":
            locals_[name] = axis
        else:
            observed.append(_Input("site", name, axis, f"observed '{name}'", site.discrete))
    return locals_, observed


def _map_per_datum(
    layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any], fn: Callable[[Any], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with ``fn`` applied to every per-datum array (positional ones first)."""
    mapped_args = tuple(fn(a) if i in layout.per_datum_args else a for i, a in enumerate(args))
    mapped_kwargs = {k: fn(a) if k in layout.per_datum_kwargs else a for k, a in kwargs.items()}
    return mapped_args, mapped_kwargs


def _head(
    layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any], stop: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with every per-datum array cut to its first ``stop`` rows."""
    return _map_per_datum(layout, args, kwargs, lambda a: a[:stop])


def _is_discrete(value: Any) -> bool:
    """Whether an array holds integers or booleans."""
    return not jnp.issubdtype(jnp.result_type(value), jnp.inexact)


def _site(site: Mapping[str, Any], plate: str) -> _Site:
    """Summarise a NumPyro sample message (see :class:`_Site`)."""
    shape = tuple(jnp.shape(site["value"]))
    latent = _is_latent(site)
    plates = tuple(_plate_names(site))
    return _Site(
        kind="factor" if isinstance(site["fn"], dist.Unit) else "latent" if latent else "observed",
        plates=plates,
        shape=shape,
        unconstrained=tuple(biject_to(site["fn"].support).inverse_shape(shape)) if latent else None,
        plate_axis=_plate_axis(site, plate) if plate in plates else None,
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
    _map_per_datum(layout, args, kwargs, arrays.append)
    found: list[_Structure] = []

    def run(abstract: list[jax.Array]) -> None:
        given = iter(abstract)
        call_args, call_kwargs = _map_per_datum(layout, args, kwargs, lambda _: next(given))
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
    except Exception:  # the user's model may raise anything on arguments it does not accept
        return None
    if structure.size != size or _placement(structure) != _placement(full):
        return None
    return structure


def _placement(structure: _Structure) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each site's kind and plates: what must not change when the model is cut."""
    return {name: (site.kind, site.plates) for name, site in structure.sites.items()}


def _data_axis(name: str, site: _Site, size: int, reference: _Structure | None) -> int | None:
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


def _argument_label(model: Model, position: int) -> str:
    """'argument 'x'' from the model's signature, else 'argument 0'."""
    try:
        parameters = list(inspect.signature(model).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if position < len(parameters) and parameters[position].kind in positional:
        return f"argument '{parameters[position].name}'"
    return f"argument {position}"


def _design(size: int) -> _Design:
    """Probe every datum of a small problem; two interior data of a large one."""
    if size <= SUB_SIZE:
        every = tuple(range(size))
        return _Design(every, every, None)
    probes = (size // 3, 2 * size // 3)
    rows = {m for p in probes for m in range(max(p - WINDOW, 0), min(p + WINDOW + 1, size))}
    return _Design(probes, tuple(sorted(rows)), WINDOW)


# ---------------------------------------------------------------------------- log density


def _arguments(
    problem: _Problem, data: Sequence[jax.Array | None]
) -> tuple[list[Any], dict[str, Any], dict[str, jax.Array]]:
    """Arguments and observed values with the per-datum arrays ``data`` (aligned with
    ``problem.inputs``; None keeps the model's own) in place."""
    args, kwargs, observed = list(problem.args), dict(problem.kwargs), {}
    for item, value in zip(problem.inputs, data, strict=True):
        if value is not None:
            {"arg": args, "kwarg": kwargs, "site": observed}[item.kind][item.key] = value
    return args, kwargs, observed


def _trace(
    problem: _Problem, u: Mapping[str, jax.Array], data: Sequence[jax.Array | None]
) -> dict[str, Any]:
    """Run the model with every latent at ``biject_to(support)(u)`` and the given data.

    The support is that of this very run, so supports that depend on other latents stay
    consistent; ``u`` uniform on (-2, 2) is NumPyro's ``init_to_uniform``.
    """
    args, kwargs, observed = _arguments(problem, data)

    def constrain(message: Mapping[str, Any]) -> jax.Array | None:
        if message["type"] != "sample" or message["name"] not in u:
            return None
        return biject_to(message["fn"].support)(u[message["name"]])

    model = handlers.substitute(problem.model, data=observed)
    model = handlers.substitute(model, substitute_fn=constrain)
    model = handlers.seed(model, rng_seed=0)  # outermost: substituted sites draw no key
    return handlers.trace(model).get_trace(*args, **kwargs)


def _site_log_densities(
    problem: _Problem, u: Mapping[str, jax.Array], data: Sequence[jax.Array]
) -> dict[str, jax.Array]:
    """log p_s for every sample site s (scaled and summed): the factors of the joint."""
    densities = {}
    for name, site in _trace(problem, u, data).items():
        if site["type"] == "sample":
            log_prob = site["fn"].log_prob(site["value"])
            scale = site["scale"]
            densities[name] = jnp.sum(log_prob if scale is None else scale * log_prob)
    return densities


def _gradients(
    problem: _Problem,
    u_globals: Mapping[str, jax.Array],
    u_locals: Mapping[str, jax.Array],
    data: Sequence[jax.Array],
) -> Gradients:
    """g_s = d log p_s / du_L for every site s and local latent L (unconstrained coordinates)."""

    def densities(v: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return _site_log_densities(problem, {**u_globals, **v}, data)

    return jax.jacrev(densities)(dict(u_locals))


def _data(
    problem: _Problem, u: Mapping[str, jax.Array], arrays: Sequence[jax.Array]
) -> list[jax.Array]:
    """Every input's array (real ones in float64), aligned with ``problem.inputs``: the
    per-datum arguments ``arrays`` and the observed values of a run at ``u``."""
    given = iter(arrays)
    data = [None if item.kind == "site" else next(given) for item in problem.inputs]
    trace = _trace(problem, u, data)
    values = [
        jnp.asarray(trace[item.key]["value"] if value is None else value)
        for item, value in zip(problem.inputs, data, strict=True)
    ]
    return [
        v if item.discrete else v.astype(jnp.float64)
        for item, v in zip(problem.inputs, values, strict=True)
    ]


# --------------------------------------------------------------------- dependency detection


def _per_datum(array: jax.Array, axis: int) -> jax.Array:
    """max |array| over every coordinate of each datum, ``axis`` running along the data."""
    moved = jnp.moveaxis(jnp.abs(array), axis, 0)
    return jnp.max(moved.reshape(moved.shape[0], -1), axis=1)


def _rows(
    shape: tuple[int, ...], axis: int, center: jax.Array, far: jax.Array, window: int
) -> jax.Array:
    """Mask, broadcastable to ``shape``, of row ``center`` along ``axis`` (of the rows farther
    than ``window`` from it when ``far``)."""
    index = jnp.arange(shape[axis])
    rows = jnp.where(far, jnp.abs(index - center) > window, index == center)
    return rows.reshape((-1,) + (1,) * (len(shape) - axis - 1))


def _probes(problem: _Problem, design: _Design) -> tuple[list[_Probe], list[_Probe]]:
    """Direction probes (local latents, then real inputs) and swap probes (discrete inputs)."""
    num_locals = len(problem.locals)
    num_real = sum(not item.discrete for item in problem.inputs)
    num_discrete = len(problem.inputs) - num_real
    far = [_Probe(0, p, True) for p in design.probes] if design.window is not None else []
    directions = [_Probe(j, n) for j in range(num_locals) for n in design.probes]
    directions += [
        probe._replace(slot=num_locals + k)
        for k in range(num_real)
        for probe in [_Probe(0, m) for m in design.rows] + far
    ]
    swaps = [
        probe._replace(slot=k)
        for k in range(num_discrete)
        for probe in [_Probe(0, m, False, d) for m in design.rows for d in (0, 1)] + far
    ]
    return directions, swaps


def _swap(x: jax.Array, axis: int, rows: jax.Array, probe: jax.Array) -> jax.Array:
    """``x`` with the masked rows replaced: by a donor row (the most different from the centre,
    or the one whose sum differs most), or, for a far probe, by the rows half the data away."""
    center, far, rule = probe[1], probe[2].astype(bool), probe[3]
    flat = jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(jnp.float64)
    distance = jnp.where(
        rule == 0,
        jnp.abs(flat - flat[center]).sum(axis=1),
        jnp.abs(flat.sum(axis=1) - flat[center].sum()),
    )
    donor = jnp.take(x, jnp.argmax(distance)[None], axis=axis)
    rolled = jnp.roll(x, x.shape[axis] // 2, axis=axis)
    return jnp.where(rows, jnp.where(far, rolled, donor), x)


class _Point(NamedTuple):
    """A random point inside the compiled program: unconstrained globals and locals, every
    input's array (aligned with ``problem.inputs``) and the gradients g_s there."""

    u_globals: dict[str, jax.Array]
    u: dict[str, jax.Array]
    data: list[jax.Array]
    base: Gradients


def _summarise(problem: _Problem, gradients: Gradients) -> Gradients:
    """Per-datum magnitudes of gradient-shaped arrays: (size,) per site and local latent."""
    return {
        s: {name: _per_datum(g, problem.locals[name]) for name, g in by_local.items()}
        for s, by_local in gradients.items()
    }


def _along(
    problem: _Problem, point: _Point, noise: Sequence[jax.Array], window: int, probe: jax.Array
) -> Gradients:
    """|d g_s / d(direction)| per datum, the direction being the probe's rows of its slot's noise.

    For a local latent's slot this is a Hessian-vector product (the coupling column); for a real
    input's slot, a mixed derivative in the data.
    """
    slot, center, far = probe[0], probe[1], probe[2].astype(bool)
    names = list(problem.locals)
    real = _positions(problem, discrete=False)
    slots = [(point.u[n], problem.locals[n]) for n in names]
    slots += [(point.data[i], problem.inputs[i].axis) for i in real]
    tangents = [
        jnp.where((slot == j) & _rows(x.shape, axis, center, far, window), n, 0).astype(x.dtype)
        for j, ((x, axis), n) in enumerate(zip(slots, noise, strict=True))
    ]

    def gradients(u: Mapping[str, jax.Array], values: list[jax.Array]) -> Gradients:
        return _gradients(problem, point.u_globals, u, _replace(point.data, real, values))

    primals = (point.u, [point.data[i] for i in real])
    u_dot = dict(zip(names, tangents[: len(names)], strict=True))
    return _summarise(problem, jax.jvp(gradients, primals, (u_dot, tangents[len(names) :]))[1])


def _swapped(problem: _Problem, point: _Point, window: int, probe: jax.Array) -> Gradients:
    """|g_s after the probe's swap - g_s| per datum."""
    slot, center, far = probe[0], probe[1], probe[2].astype(bool)
    discrete = _positions(problem, discrete=True)
    values = []
    for k, i in enumerate(discrete):
        x, axis = point.data[i], problem.inputs[i].axis
        rows = (slot == k) & _rows(x.shape, axis, center, far, window)
        values.append(_swap(x, axis, rows, probe))
    data = _replace(point.data, discrete, values)
    gradients = _gradients(problem, point.u_globals, point.u, data)
    return _summarise(problem, jax.tree.map(jnp.subtract, gradients, point.base))


def _positions(problem: _Problem, discrete: bool) -> list[int]:
    """Positions in ``problem.inputs`` of the discrete (or of the real) inputs."""
    return [i for i, item in enumerate(problem.inputs) if item.discrete == discrete]


def _evaluator(
    problem: _Problem, design: _Design, directions: list[_Probe], swaps: list[_Probe]
) -> Callable[..., _Tables]:
    """One compiled program giving the tables at a random point.

    Its arguments are the per-datum arguments, the unconstrained globals and locals, and one
    random direction per slot (local latents, then real inputs); randomness is drawn outside,
    which keeps the compilation short. The probes are vectorised all at once on a sub-problem,
    FULL_DATA_BATCH at a time on the full data.
    """
    window = design.window or problem.size

    def evaluate(
        arrays: Sequence[jax.Array],
        u_globals: dict[str, jax.Array],
        u: dict[str, jax.Array],
        noise: Sequence[jax.Array],
    ) -> _Tables:
        data = _data(problem, {**u_globals, **u}, arrays)
        point = _Point(u_globals, u, data, _gradients(problem, u_globals, u, data))

        def table(fn: Callable[[jax.Array], Gradients], probes: list[_Probe]) -> Gradients:
            batch = len(probes) if design.window is None else FULL_DATA_BATCH
            return jax.lax.map(fn, jnp.asarray(probes), batch_size=batch)

        return _Tables(
            finite={s: _all_finite(g) for s, g in point.base.items()},
            magnitude={s: _max_abs(g) for s, g in point.base.items()},
            directions=table(partial(_along, problem, point, noise, window), directions),
            swaps=table(partial(_swapped, problem, point, window), swaps) if swaps else None,
        )

    options = COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(evaluate, compiler_options=options)


def _replace(
    data: Sequence[jax.Array], positions: Sequence[int], values: Sequence[jax.Array]
) -> list[jax.Array]:
    """``data`` with the arrays at ``positions`` replaced by ``values``."""
    replaced = list(data)
    for i, value in zip(positions, values, strict=True):
        replaced[i] = value
    return replaced


def _all_finite(by_local: Mapping[str, jax.Array]) -> jax.Array:
    """Whether every gradient array is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in by_local.values()]))


def _max_abs(by_local: Mapping[str, jax.Array]) -> jax.Array:
    """The largest absolute entry of the gradient arrays."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(g), initial=0.0) for g in by_local.values()]))


def _evaluate_points(
    problem: _Problem, design: _Design, directions: list[_Probe], swaps: list[_Probe]
) -> list[_Tables]:
    """The tables at NUM_POINTS random points where every gradient g_s is finite.

    Raises:
        ModelError: the model fails under differentiation, or no such point among MAX_SEEDS
            draws.
    """
    evaluate = _evaluator(problem, design, directions, swaps)
    arrays = [
        (problem.args if item.kind == "arg" else problem.kwargs)[item.key]
        for item in problem.inputs
        if item.kind != "site"
    ]
    tables, bad = [], set()
    rng = np.random.default_rng(0)
    for _ in range(MAX_SEEDS):
        try:
            result = evaluate(arrays, *_random_point(problem, rng))
        except Exception as error:  # the user's model may fail under differentiation
            raise ModelError(
                "avi.check could not differentiate the model's log density with respect to its "
                f"local latents and data: {type(error).__name__}: {error}"
            ) from error
        nonfinite = {s for s, finite in result.finite.items() if not bool(finite)}
        bad |= nonfinite
        if not nonfinite:
            tables.append(result)
        if len(tables) == NUM_POINTS:
            break
    if not tables:
        names = ", ".join(f"'{s}'" for s in sorted(bad))
        raise ModelError(
            f"The log density of site(s) {names} has non-finite gradients at {MAX_SEEDS} random "
            "points of the latents (drawn as numpyro's init_to_uniform does). Check the supports "
            "and the numerical stability of those sites (e.g. add jitter to covariance matrices)."
        )
    return tables


def _random_point(
    problem: _Problem, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[np.ndarray]]:
    """Unconstrained globals and locals uniform on (-2, 2), as NumPyro's init_to_uniform draws
    them, and a standard normal direction per slot (local latents, then real inputs)."""
    u = {
        name: rng.uniform(-2, 2, size=site.unconstrained)
        for name, site in problem.sites.items()
        if site.kind == "latent"
    }
    shapes = [u[n].shape for n in problem.locals] + [
        problem.sites[item.key].shape
        if item.kind == "site"
        else np.shape((problem.args if item.kind == "arg" else problem.kwargs)[item.key])
        for item in problem.inputs
        if not item.discrete
    ]
    u_globals = {n: v for n, v in u.items() if n not in problem.locals}
    return u_globals, {n: u[n] for n in problem.locals}, [rng.normal(size=s) for s in shapes]


def _hits(
    table: Gradients, probes: Sequence[_Probe], floor: Mapping[str, float | jax.Array]
) -> dict[tuple[str, str], np.ndarray]:
    """(site, local) -> (K, size) booleans: the entries above RTOL times a reference.

    The reference of site s is the largest entry of s among the probes of the same slot, or
    ``floor[s]`` if larger; NaN counts as a hit.
    """
    slots = np.array([p.slot for p in probes])
    hits = {}
    for s, by_local in table.items():
        values = {name: np.asarray(v) for name, v in by_local.items()}
        largest = np.stack([np.nan_to_num(v, nan=0.0).max(axis=1) for v in values.values()])
        reference = {k: max(largest[:, slots == k].max(), float(floor[s])) for k in set(slots)}
        scale = np.array([reference[k] for k in slots])[:, None]
        for name, v in values.items():
            hits[s, name] = ~(v <= RTOL * scale)
    return hits


def _dependencies(problem: _Problem, design: _Design) -> tuple[set[_Edge], set[_Edge]]:
    """Coupling edges (between local latents of different data) and data edges."""
    directions, swaps = _probes(problem, design)
    names = list(problem.locals)
    real = [problem.inputs[i].label for i in _positions(problem, discrete=False)]
    discrete = [problem.inputs[i].label for i in _positions(problem, discrete=True)]
    coupling: set[_Edge] = set()
    data: set[_Edge] = set()
    for tables in _evaluate_points(problem, design, directions, swaps):
        no_floor = dict.fromkeys(tables.directions, 0.0)
        for (term, local), hits in _hits(tables.directions, directions, no_floor).items():
            for probe, row in zip(directions, hits, strict=True):
                if probe.slot < len(names):
                    coupling |= _coupling_edges(names[probe.slot], local, term, probe, row)
                else:
                    source = real[probe.slot - len(names)]
                    data |= _data_edges(local, source, term, probe, row, design.probes)
        if tables.swaps is not None:
            for (term, local), hits in _hits(tables.swaps, swaps, tables.magnitude).items():
                for probe, row in zip(swaps, hits, strict=True):
                    source = discrete[probe.slot]
                    data |= _data_edges(local, source, term, probe, row, design.probes)
    return coupling, data


def _coupling_edges(
    local: str, other: str, term: str, probe: _Probe, row: np.ndarray
) -> set[_Edge]:
    """Edges from the Hessian column ``row`` (over data) of ``other`` along ``local`` at the
    probe's datum: every other datum with a non-zero mixed partial."""
    n = probe.center
    return {_Edge(local, other, term, n, int(m) - n) for m in np.flatnonzero(row) if m != n}


def _data_edges(
    local: str, source: str, term: str, probe: _Probe, row: np.ndarray, probes: Iterable[int]
) -> set[_Edge]:
    """Edges from the changed gradients ``row`` (over data) when ``probe`` perturbs ``source``."""
    if probe.far:
        return {_Edge(local, source, term, probe.center, None)} if row[probe.center] else set()
    return {_Edge(local, source, term, n, probe.center - n) for n in probes if row[n]}


def _window(local: str, edges: Sequence[_Edge], size: int) -> _Window:
    """The window of offsets the optimal factor of ``local`` depends on, if there is one.

    The window is the union of the offsets found at every probed datum: data at the ends lack
    some neighbours (Remark 3.7), and masks or discrete data can make a dependency vanish at
    some data, so the sets need not be equal. There is no fixed window (the dependency is
    dense) when it reaches beyond the probed neighbourhood or spans the whole analysed series.
    """
    if any(e.offset is None for e in edges):
        sources = sorted({e.source for e in edges if e.offset is None})
        return _Window(local, {}, f"depends on {_join(sources)} beyond {WINDOW} data away")
    offsets = {e.offset for e in edges}
    if offsets and max(offsets) - min(offsets) >= max(size - 1, 2):
        return _Window(
            local,
            {},
            f"depends on {_describe_sources(edges)}: the whole analysed series of {size} data",
        )
    links: dict[tuple[str, int], set[str]] = {}
    for e in edges:
        links.setdefault((e.source, e.offset), set()).add(e.term)
    return _Window(local, {k: frozenset(v) for k, v in links.items()}, None)


# ------------------------------------------------------------------------------- reports


def _join(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _offsets_phrase(offsets: Iterable[int]) -> str:
    """'offset 0', 'offsets -1 and 0', or a range when there are many."""
    offsets = sorted(set(offsets))
    if len(offsets) > 6:
        return f"{len(offsets)} offsets from {offsets[0]} to {offsets[-1]}"
    noun = "offset" if len(offsets) == 1 else "offsets"
    return f"{noun} {_join([str(o) for o in offsets])}"


def _describe_sources(edges: Sequence[_Edge]) -> str:
    """Each source of the edges with its offsets."""
    by_source: dict[str, set[int]] = {}
    for e in edges:
        by_source.setdefault(e.source, set()).add(e.offset)
    return _join([f"{s} at {_offsets_phrase(o)}" for s, o in sorted(by_source.items())])


def _term_phrase(problem: _Problem, local: str, term: str) -> str:
    """The factor of the joint a site contributes, seen from the local latent ``local``."""
    kind = problem.sites[term].kind
    if term == local:
        return "its prior"
    if kind == "latent":
        return f"the prior of '{term}'"
    if kind == "factor":
        return f"the factor '{term}'"
    return f"the likelihood of '{term}'"


def _through(problem: _Problem, local: str, terms: Iterable[str]) -> str:
    """'through its prior and the likelihood of 'x''."""
    return "through " + _join([_term_phrase(problem, local, t) for t in sorted(set(terms))])


def _scope(problem: _Problem) -> str:
    """The explanation's opening: the plate, N, what was analysed, locals outside the plate."""
    head = f"Data plate '{problem.plate}' (N = {problem.num_data})"
    if problem.size < problem.num_data:
        head += f", analysed on its first {problem.size} data"
    elif problem.size > SUB_SIZE:
        probes = _join([str(p) for p in _design(problem.size).probes])
        head += (
            ", analysed on all data (the model does not re-run on fewer data), probing data "
            f"{probes} within {WINDOW} neighbours"
        )
    head += "."
    for name in problem.disguised:
        head += (
            f" '{name}' is sampled outside the plate but has one coordinate per datum (axis "
            f"{problem.locals[name]}), so it is a local latent."
        )
    return head


def _no_locals_report(problem: _Problem) -> StructureReport:
    """The verdict for a model whose latents are all global."""
    return StructureReport(
        "simple-hierarchical",
        (0,),
        f"{_scope(problem)} It holds no local latent: every latent is global and is fitted "
        "alike by amortized and factorized VI, so there is nothing to amortize and no "
        "amortization gap (trivially simple hierarchical, Definition 3.3).",
    )


def _coupled_report(problem: _Problem, edges: set[_Edge]) -> StructureReport:
    """The verdict when local latents of different data are coupled (Proposition 3.8)."""
    groups: dict[tuple[str, str], list[_Edge]] = {}
    for e in edges:
        groups.setdefault((e.local, e.source), []).append(e)
    details = [
        f"local latent '{local}' is coupled to '{other}' of other data at "
        f"{_offsets_phrase(e.offset for e in group)} "
        f"{_through(problem, local, (e.term for e in group))}"
        for (local, other), group in sorted(groups.items())
    ]
    free = sorted(set(problem.locals) - {e.local for e in edges} - {e.source for e in edges})
    aside = (
        f" ({_join([repr(n) for n in free])} alone would not be coupled, but one coupled local "
        "latent suffices.)"
        if free
        else ""
    )
    explanation = (
        f"{_scope(problem)} The model is not amortizable: {'; '.join(details)}.{aside} By "
        "Lemma 3.1 the optimal factor q(z_n) then depends on the factors of other data's local "
        "latents, so a datum's influence is neither global nor confined to its own latent "
        "(Theorem 3.4); as for the hidden Markov model, by Proposition 3.8 no inference function "
        "of a strict subset of the data is ideal. Fit it with avi.Factorized()."
    )
    return StructureReport("not-amortizable", None, explanation)


def _links_phrase(problem: _Problem, window: _Window) -> str:
    """What a local latent's optimal factor depends on, source by source."""
    if not window.links:
        return f"'{window.local}' depends on no data (only on the globals)"
    by_source: dict[str, list[tuple[int, frozenset[str]]]] = {}
    for (source, offset), terms in window.links.items():
        by_source.setdefault(source, []).append((offset, terms))
    parts = [
        f"{source} at {_offsets_phrase(o for o, _ in links)} "
        f"({_through(problem, window.local, set().union(*(t for _, t in links)))})"
        for source, links in sorted(by_source.items())
    ]
    return f"'{window.local}' depends on {_join(parts)}"


def _window_report(problem: _Problem, windows: Sequence[_Window]) -> StructureReport:
    """The verdict for uncoupled local latents: dense, simple hierarchical or expanded domain."""
    dense = [w for w in windows if w.problem is not None]
    if dense:
        details = "; ".join(f"local latent '{w.local}' {w.problem}" for w in dense)
        return StructureReport(
            "not-amortizable",
            None,
            f"{_scope(problem)} No local latent is coupled to another datum's, but {details}. "
            "Its optimal factor (Lemma 3.1) then depends on the data through no fixed window, "
            "as in a dense hierarchical model: no inference function of a strict subset of the "
            "data is ideal (Theorem 3.4, Proposition 3.8). Fit it with avi.Factorized().",
        )
    details = "; ".join(_links_phrase(problem, w) for w in windows)
    inputs = tuple(sorted({0} | {offset for w in windows for _, offset in w.links}))
    if inputs == (0,):
        return StructureReport(
            "simple-hierarchical",
            inputs,
            f"{_scope(problem)} Each local latent's optimal factor (CAVI, Lemma 3.1) involves "
            f"only its own datum and the globals: {details}; no local latent shares a factor "
            "with another datum's. The model is simple hierarchical (Definition 3.3), so by "
            "Theorem 3.4 an ideal inference function of the datum alone exists: "
            "avi.Amortized(encoder) can close the amortization gap.",
        )
    return StructureReport(
        "expanded-domain",
        inputs,
        f"{_scope(problem)} {details}; no local latent is coupled to another datum's. The "
        "model is not simple hierarchical, so no inference function of the datum alone is "
        "ideal (Theorem 3.4), but each optimal factor (Lemma 3.1) depends on the data at fixed "
        f"offsets, so an ideal function of the window {inputs} exists, as for the paper's saw "
        f"model: use avi.Amortized(encoder, inputs=avi.Window(offsets={inputs})). Data at the "
        "ends lack part of the window and keep their own factors (Remark 3.7).",
    )
