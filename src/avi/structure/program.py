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
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from avi.errors import ModelError
from avi.structure.density import Gradients, input_arrays, site_gradients
from avi.structure.probes import Design, Point, Probe, exchanged, rows, swapped
from avi.structure.problem import Problem

NUM_POINTS = 2
"""Random points of the latents whose dependency patterns are pooled (avoids chance zeros)."""
MAX_SEEDS = 8
"""Random points tried to find NUM_POINTS where every gradient is finite."""
BATCH = 4
"""Probes vectorised at once (bounds memory on large problems)."""
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
"""On CPU: the program runs a few times on small arrays, so compiling fast matters, not LLVM's
optimisations. XLA's older elemental emitters (``xla_cpu_use_fusion_emitters=False``) compiled
the linear model's program at N = 10^4 in 0.21 s against 0.46 s, but both full test runs with
them had a worker die of a segmentation fault inside a later XLA compilation (none in the run
without them, nor in 40 fits alternating with the check in one process): left out until
that is understood."""
CACHE_SIZE = 16
"""Compiled programs kept for reuse; the least recently used is dropped first."""


class Tables(NamedTuple):
    """What one random point gives, one row per probe.

    Attributes:
        finite: site -> whether all its gradients g_s are finite at the point.
        magnitude: site -> max |g_s|, the scale a swap's change is judged against.
        coupling: site -> local M -> (K1, size) max |d^2 log p_s / dz_n du_M| per datum, one row
            per row probe (local latent, probed datum n).
        data: site -> per real input, (K1, size, d) signed d g_s(z_n) / dx along the plate, or
            (K1, M) for observed data outside it.
        swaps: |g_s(z_n) after the swap - g_s(z_n)| for the swap probes, (K2, size) arrays.
        exchange: the exchange probe's (difference, scale) per pair for a guessed window
            (:func:`exchange_points`), or None when none was guessed.
    """

    finite: dict[str, jax.Array]
    magnitude: dict[str, jax.Array]
    coupling: Gradients
    data: dict[str, list[jax.Array]]
    swaps: Gradients | None
    exchange: tuple[jax.Array, jax.Array] | None


_programs: OrderedDict[Hashable, Callable[..., Any]] = OrderedDict()
"""The compiled programs kept, by :func:`_program_key`."""


Exchange = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]
"""A window's offsets and the pairs (n, m) of the exchange probe (:func:`exchange_points`)."""


def evaluate_points(
    problem: Problem,
    design: Design,
    row_probes: list[Probe],
    swaps: list[Probe],
    exchange: Exchange | None = None,
) -> list[Tables]:
    """The tables at NUM_POINTS random points where every gradient g_s is finite, with the
    exchange probe of a guessed window when ``exchange`` is given (one program compiled
    instead of two when the guess is the window found).

    Raises:
        ModelError: the model fails under differentiation, or no such point among MAX_SEEDS
            draws.
    """
    evaluate = evaluator(problem, ("rows", design, tuple(row_probes), tuple(swaps), exchange),
                          lambda p: _rows_program(p, design, row_probes, swaps, exchange))
    found = at_points(problem, lambda point: evaluate(per_datum_arrays(problem), *point))
    return [tables for tables, _ in found]


def exchange_points(
    problem: Problem, offsets: tuple[int, ...], pairs: list[tuple[int, int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each random point, the exchange probe's (difference, scale) per pair (n, m).

    The points are those of :func:`evaluate_points` (the same draws, the same finiteness), so
    a guess evaluated with the tables gives the same result."""
    evaluate = evaluator(problem, ("exchange", offsets, tuple(pairs)),
                          lambda p: _exchange_program(p, offsets, pairs))
    found = at_points(problem, lambda point: evaluate(per_datum_arrays(problem), *point))
    return [(np.asarray(d), np.asarray(s)) for (d, s), _ in found]


def per_datum_arrays(problem: Problem) -> list[np.ndarray]:
    """The per-datum arguments as NumPy arrays, real ones in float64 (whatever dtype JAX or the
    caller left them in, so that a compiled program always receives the same types)."""
    arrays = []
    for item in problem.inputs:
        if item.kind == "site":
            continue
        value = np.asarray((problem.args if item.kind == "arg" else problem.kwargs)[item.key])
        arrays.append(value.astype(np.float64) if item.real else value)
    return arrays


def at_points(problem: Problem, run: Callable[[tuple[Any, ...]], Any]) -> list[tuple[Any, set]]:
    """``run`` at NUM_POINTS random points where every gradient is finite."""
    results, bad = [], set()
    rng = np.random.default_rng(0)
    for _ in range(MAX_SEEDS):
        try:
            result, finite = run(random_point(problem, rng))
        except Exception as error:  # the user's model may fail under differentiation
            raise ModelError(
                "avi.check could not differentiate the model's log density with respect to its "
                f"local latents and data: {type(error).__name__}: {error}"
            ) from error
        nonfinite = {s for s, ok in finite.items() if not bool(ok)}
        bad |= nonfinite
        if not nonfinite:
            results.append((result, nonfinite))
        if len(results) == NUM_POINTS:
            break
    if not results:
        names = ", ".join(f"'{s}'" for s in sorted(bad))
        raise ModelError(
            f"The log density of site(s) {names} has non-finite gradients at {MAX_SEEDS} random "
            "points of the latents (drawn as numpyro's init_to_uniform does). Check the supports "
            "and the numerical stability of those sites (e.g. add jitter to covariance matrices)."
        )
    return results


def random_point(
    problem: Problem, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[np.ndarray]]:
    """Unconstrained globals and locals uniform on (-2, 2), as NumPyro's init_to_uniform draws
    them, and a standard normal direction per local latent."""
    u = {
        name: rng.uniform(-2, 2, size=site.unconstrained)
        for name, site in problem.sites.items()
        if site.kind == "latent"
    }
    u_globals = {n: v for n, v in u.items() if n not in problem.locals}
    noise = [rng.normal(size=u[n].shape) for n in problem.locals]
    return u_globals, {n: u[n] for n in problem.locals}, noise


def evaluator(
    problem: Problem, extra: Hashable, build: Callable[[Problem], Callable[..., Any]]
) -> Callable[..., Any]:
    """The compiled program for this problem: a kept one if its key matches, else a new one.

    A new program is kept unless some argument of the model is unhashable (see
    :func:`_program_key`); JAX compiles a program once per shapes of its arguments.
    """
    detached = _without_data(problem)
    key = _program_key(detached, extra)
    program = None if key is None else _programs.pop(key, None)
    if program is None:
        program = build(detached)
    if key is not None:
        _programs[key] = program
        if len(_programs) > CACHE_SIZE:
            _programs.popitem(last=False)
    return program


def _point(problem: Problem, arrays, u_globals, u) -> Point:
    """The point with every input's array and the gradients g_s there."""
    data = input_arrays(problem, {**u_globals, **u}, arrays)
    return Point(u_globals, u, data, site_gradients(problem, u_globals, u, data))


def _finite(point: Point) -> dict[str, jax.Array]:
    return {s: _all_finite(g) for s, g in point.base.items()}


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit`` with the fast-compiling options on CPU (COMPILER_OPTIONS)."""
    options = COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(fn, compiler_options=options)


def _rows_program(
    problem: Problem,
    design: Design,
    row_probes: list[Probe],
    swaps: list[Probe],
    exchange: Exchange | None,
) -> Callable[..., Any]:
    """One compiled program giving the tables at a random point.

    Its arguments are the per-datum arguments, the unconstrained globals and locals, and one
    random direction per local latent; randomness is drawn outside, which keeps the compilation
    short. The probes run BATCH at a time, which bounds memory on large problems.
    """
    window = design.window or problem.size

    def evaluate(arrays, u_globals, u, noise) -> tuple[Tables, dict[str, jax.Array]]:
        point = _point(problem, arrays, u_globals, u)
        row_table = jax.lax.map(
            partial(rows, problem, point, noise), jnp.asarray(row_probes), batch_size=BATCH
        )
        swap_table = (
            jax.lax.map(partial(swapped, problem, point, window), jnp.asarray(swaps),
                        batch_size=BATCH)
            if swaps
            else None
        )
        exchange_table = (
            jax.lax.map(partial(exchanged, problem, point, exchange[0]), jnp.asarray(exchange[1]),
                        batch_size=BATCH)
            if exchange
            else None
        )
        tables = Tables(
            finite=_finite(point),
            magnitude={s: _max_abs(g) for s, g in point.base.items()},
            coupling=row_table[0],
            data=row_table[1],
            swaps=swap_table,
            exchange=exchange_table,
        )
        return tables, tables.finite

    return jit(evaluate)


def _exchange_program(
    problem: Problem, offsets: tuple[int, ...], pairs: list[tuple[int, int]]
) -> Callable[..., Any]:
    """One compiled program giving the exchange probe of every pair at a random point."""

    def evaluate(arrays, u_globals, u, noise):
        point = _point(problem, arrays, u_globals, u)
        result = jax.lax.map(
            partial(exchanged, problem, point, offsets), jnp.asarray(pairs), batch_size=BATCH
        )
        return result, _finite(point)

    return jit(evaluate)


def _without_data(problem: Problem) -> Problem:
    """``problem`` with its per-datum arguments set to None: the program takes them as
    arguments, so a kept program holds no data and its key no data values.

    The other arguments become constants of a program traced in x64 mode; NumPy arrays among
    them are copied first. JAX remembers a NumPy constant of an x64 trace by the array itself,
    and the user's own array (an integer index such as ``county_idx``) would afterwards be
    treated as 64-bit outside x64 mode too: the user's next gather with it, or the next
    ``avi.check`` of another model on it, fails with "lax.add requires arguments to have the
    same dtypes, got int64, int32"."""
    per_datum = {(item.kind, item.key) for item in problem.inputs}
    args = tuple(
        None if ("arg", i) in per_datum else _private(a) for i, a in enumerate(problem.args)
    )
    kwargs = {
        k: None if ("kwarg", k) in per_datum else _private(a) for k, a in problem.kwargs.items()
    }
    return dataclasses.replace(problem, args=args, kwargs=kwargs)


def _private(value: Any) -> Any:
    """``value`` with every NumPy array in it (containers included) copied."""
    return jax.tree.map(lambda a: np.array(a) if isinstance(a, np.ndarray) else a, value)


def _program_key(problem: Problem, extra: Hashable) -> Hashable | None:
    """Everything the program depends on besides the shapes of its arguments, or None when
    some of it is unhashable.

    That is the model (by identity, as ``jax.jit`` keys a function), the analysed problem's
    sites, local latents and per-datum inputs, the model's other arguments (constants of the
    program, see :func:`_constant`), the probes (``extra``) and the backend.
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
            extra,
            jax.default_backend(),
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
