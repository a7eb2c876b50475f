"""``avi.check``: the verdict of Theorem 3.4 / Proposition 3.8 read from a model's structure."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import numpyro

from avi.data.boundary import convert_arguments
from avi.data.groups import group_data
from avi.model import Model, trace_model
from avi.structure.beyond import verify_beyond
from avi.structure.dependencies import dependencies, local_window
from avi.structure.probes import design_for
from avi.structure.problem import Problem, analysed_problem
from avi.structure.program import exchange_points
from avi.structure.report import (
    StructureReport,
    beyond_report,
    coupled_report,
    no_locals_report,
    position_report,
    unseen_report,
    window_report,
)

EXCHANGE_RTOL = 1e-7
"""A swap of two data's windows changes g(z_n) beyond rounding above this relative size."""
EXCHANGE_PAIRS = 12
"""Consecutive and spread candidates compared with the reference datum in the exchange probe."""
GUESSED_WINDOW = (0,)
"""The window whose exchange probe runs in the dependencies' program: the datum alone, that of
simple hierarchical models (the usual case), so that they compile one program, not two."""


def check(
    model: Model,
    *args: Any,
    plate: str | None = None,
    groups: str | None = None,
    **kwargs: Any,
) -> StructureReport:
    """Tell whether amortized VI can reach factorized VI's optimum on ``model(*args, **kwargs)``.

    The decision follows the dependency structure of the optimal CAVI factors q*(z_n)
    (Lemma 3.1): simple hierarchical models (Definition 3.3) admit an ideal inference function
    of the datum (Theorem 3.4); models whose factors depend on the data at fixed offsets admit one
    of a window of data (expanded domain, as the saw model); models with coupled local latents,
    dense dependencies, dependence on data outside the data plate, or on the datum's position
    (not exchangeable) admit none of the encoder's input (Proposition 3.8). A global summary of
    the data (its mean, sd, ...) is the same for every datum and counts as a global influence.
    See the docstring of :mod:`avi.structure` for how the structure is measured; names of sites
    play no role. JAX's x64 mode and NumPyro's validation flag are restored on return.

    Args:
        model: a NumPyro model with a data plate, written with jax.numpy (traceable in its
            arguments, as :func:`avi.fit` requires).
        *args: the model's positional arguments.
        plate: name of the data plate, if the automatic choice must be overridden.
        groups: a grouped model's index argument, where ambiguous (see :func:`avi.fit`); a
            grouped model's data are its groups (each group's observations, its datum).
        **kwargs: the model's keyword arguments.

    Returns:
        The verdict, the encoder's input offsets and an explanation.

    Raises:
        ModelError: no usable data plate, a discrete latent, a parameter in the data plate, a
            failing model, one that JAX cannot trace, or a log density that is not finite at
            random points.
        DataError: non-finite data.
    """
    args, kwargs = convert_arguments(args, kwargs)
    model, args, kwargs, plate = group_data(model, args, kwargs, plate, groups)
    layout = trace_model(model, args, kwargs, plate).layout
    with jax.enable_x64(True), numpyro.validation_enabled(False):
        problem = analysed_problem(model, args, kwargs, layout)
        report = _prefix_report(problem)
        counts = any(item.valued and item.along for item in problem.inputs)
        unverified = (problem.size < problem.num_data or counts) and problem.locals
        if unverified and report.verdict != "not-amortizable":
            verification = verify_beyond(model, args, kwargs, layout, problem, report.inputs)
            return beyond_report(problem, report, *verification)
    return dataclasses.replace(report, verified_data=problem.size if problem.locals
                               else problem.num_data)


def _prefix_report(problem: Problem) -> StructureReport:
    """The verdict on the analysed problem (all data, or the first k of a large problem)."""
    if not problem.locals:
        return no_locals_report(problem)
    guess = exchange_pairs(problem.size, GUESSED_WINDOW)
    found = dependencies(
        problem, design_for(problem.size), (GUESSED_WINDOW, tuple(guess)) if guess else None
    )
    if found.coupling:
        return coupled_report(problem, found.coupling)
    if found.unseen:
        return unseen_report(problem, found.unseen)
    windows = [
        local_window(name, [e for e in found.data if e.local == name], problem.size)
        for name in problem.locals
    ]
    if all(w.problem is None for w in windows):
        offsets = tuple(sorted({0} | {o for w in windows for _, o in w.links}))
        moved = _position_dependent(
            problem, offsets, found.exchanges if offsets == GUESSED_WINDOW else None
        )
        if moved is not None:
            return position_report(problem, offsets, moved)
    return window_report(problem, windows, found.summaries, found.siblings)


def exchange_pairs(size: int, offsets: tuple[int, ...]) -> list[tuple[int, int]]:
    """Pairs (n, m) of interior data whose windows n + K and m + K are disjoint: m the first
    interior datum, n the EXCHANGE_PAIRS next ones past the window and as many spread out."""
    low, high = max(0, -min(offsets)), size - max(0, max(offsets))
    start = low + max(offsets) - min(offsets) + 1
    if start >= high:
        return []
    spread = np.linspace(start, high - 1, EXCHANGE_PAIRS).astype(int).tolist()
    candidates = sorted({*range(start, min(start + EXCHANGE_PAIRS, high)), *spread})
    return [(n, low) for n in candidates]


def _position_dependent(
    problem: Problem,
    offsets: tuple[int, ...],
    evaluated: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[int, int] | None:
    """A pair (n, m) whose swap changes the optimal factor's gradient, or None: the model is
    exchangeable (Definition 3.3) up to its window. ``evaluated``: the exchange probe of these
    offsets' pairs, already computed with the dependencies."""
    pairs = exchange_pairs(problem.size, offsets)
    if not pairs:
        return None
    if evaluated is None:
        evaluated = exchange_points(problem, offsets, pairs)
    for diff, scale in evaluated:
        moved = np.flatnonzero(diff > EXCHANGE_RTOL * scale + 1e-300)
        if moved.size:
            return pairs[int(moved[0])]
    return None


