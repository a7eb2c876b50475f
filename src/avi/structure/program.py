"""The compiled program that evaluates every probe at a random point, and its reuse.

One program gives the tables of derivative probes (:mod:`avi.structure.probes`) at a random
point of the latents, drawn outside as NumPyro's ``init_to_uniform`` does, in float64. It is
compiled once and reused by later calls of ``avi.check`` on the same model and analysed problem
(sites, local latents, per-datum inputs and the other arguments' values): checking new data of
the same shapes compiles nothing.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from avi.errors import ModelError
from avi.structure.density import Gradients, input_arrays, site_gradients
from avi.structure.probes import Design, Point, Probe, along, swapped
from avi.structure.problem import Problem

NUM_POINTS = 2
"""Random points of the latents whose dependency patterns are pooled (avoids chance zeros)."""
MAX_SEEDS = 8
"""Random points tried to find NUM_POINTS where every gradient is finite."""
FULL_DATA_BATCH = 4
"""Full-data evaluations vectorised at once when the model cannot be shrunk (bounds memory)."""
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
"""On CPU: the program runs a few times on small arrays, so compiling fast matters, not LLVM's
optimisations."""
CACHE_SIZE = 16
"""Compiled programs kept for reuse; the least recently used is dropped first."""


class Tables(NamedTuple):
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


_programs: OrderedDict[Hashable, Callable[..., Tables]] = OrderedDict()
"""The compiled programs kept, by :func:`_program_key`."""


def evaluate_points(
    problem: Problem, design: Design, directions: list[Probe], swaps: list[Probe]
) -> list[Tables]:
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
    problem: Problem, rng: np.random.Generator
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


def _evaluator(
    problem: Problem, design: Design, directions: list[Probe], swaps: list[Probe]
) -> Callable[..., Tables]:
    """The compiled program for this problem: a kept one if its key matches, else a new one.

    A new program is kept unless some argument of the model is unhashable (see
    :func:`_program_key`); JAX compiles a program once per shapes of its arguments.
    """
    options = COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    detached = _without_data(problem)
    key = _program_key(detached, design, directions, swaps, options)
    program = None if key is None else _programs.pop(key, None)
    if program is None:
        program = _compiled(detached, design, directions, swaps, options)
    if key is not None:
        _programs[key] = program
        if len(_programs) > CACHE_SIZE:
            _programs.popitem(last=False)
    return program


def _compiled(
    problem: Problem,
    design: Design,
    directions: list[Probe],
    swaps: list[Probe],
    options: dict[str, Any] | None,
) -> Callable[..., Tables]:
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
    ) -> Tables:
        data = input_arrays(problem, {**u_globals, **u}, arrays)
        point = Point(u_globals, u, data, site_gradients(problem, u_globals, u, data))

        def table(fn: Callable[[jax.Array], Gradients], probes: list[Probe]) -> Gradients:
            batch = len(probes) if design.window is None else FULL_DATA_BATCH
            return jax.lax.map(fn, jnp.asarray(probes), batch_size=batch)

        return Tables(
            finite={s: _all_finite(g) for s, g in point.base.items()},
            magnitude={s: _max_abs(g) for s, g in point.base.items()},
            directions=table(partial(along, problem, point, noise, window), directions),
            swaps=table(partial(swapped, problem, point, window), swaps) if swaps else None,
        )

    return jax.jit(evaluate, compiler_options=options)


def _without_data(problem: Problem) -> Problem:
    """``problem`` with its per-datum arguments set to None: the program takes them as
    arguments, so a kept program holds no data and its key no data values."""
    per_datum = {(item.kind, item.key) for item in problem.inputs}
    args = tuple(None if ("arg", i) in per_datum else a for i, a in enumerate(problem.args))
    kwargs = {k: None if ("kwarg", k) in per_datum else a for k, a in problem.kwargs.items()}
    return dataclasses.replace(problem, args=args, kwargs=kwargs)


def _program_key(
    problem: Problem,
    design: Design,
    directions: list[Probe],
    swaps: list[Probe],
    options: dict[str, Any] | None,
) -> Hashable | None:
    """Everything the program depends on besides the shapes of its arguments, or None when
    some of it is unhashable.

    That is the model (by identity, as ``jax.jit`` keys a function), the analysed problem's
    sites, local latents and per-datum inputs, the model's other arguments (constants of the
    program, see :func:`_constant`), the probes and the compiler options.
    """
    try:
        key = (
            problem.model,
            problem.plate,
            problem.size,
            tuple(problem.locals.items()),
            problem.inputs,
            tuple(problem.sites.items()),
            _constant(problem.args),
            _constant(problem.kwargs),
            design,
            tuple(directions),
            tuple(swaps),
            None if options is None else tuple(sorted(options.items())),
        )
        hash(key)
    except TypeError:  # an unhashable argument, or an array without values (PRNG keys)
        return None
    return key


def _constant(value: Any) -> Hashable:
    """A hashable stand-in for an argument held as a constant, equal for equal values.

    Arrays compare by dtype, shape and bytes; tuples, lists and dicts entry by entry; other
    objects by their own equality and their type (so that 1, 1.0 and True differ).

    Raises:
        TypeError: an array of Python objects, or one NumPy cannot read (PRNG keys).
    """
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError("an array of Python objects has no bytes to compare")
        return (np.ndarray, array.dtype, array.shape, array.tobytes())
    if isinstance(value, tuple | list):
        return (type(value), tuple(_constant(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _constant(v)) for k, v in value.items()))
    return (type(value), value)


def _all_finite(by_local: Mapping[str, jax.Array]) -> jax.Array:
    """Whether every gradient array is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in by_local.values()]))


def _max_abs(by_local: Mapping[str, jax.Array]) -> jax.Array:
    """The largest absolute entry of the gradient arrays."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(g), initial=0.0) for g in by_local.values()]))
