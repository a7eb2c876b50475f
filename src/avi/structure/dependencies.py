"""The dependency edges of the local latents' optimal factors, and their windows.

By Lemma 3.1 the optimal factor q*(z_n) depends on exactly the data and latents that share a
non-separable factor of the joint with z_n. The probes' tables (:mod:`avi.structure.program`)
give its edges: couplings to other data's local latents (as in a hidden Markov model) and data
at offsets from n. The window is the union of the offsets found over the probed data (data at
the ends lack some neighbours, Remark 3.7; masks and discrete data can hide a dependency at some
data); there is none when the dependency is dense.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import numpy as np

from avi.structure.density import Gradients
from avi.structure.probes import WINDOW, Design, Probe, make_probes, positions
from avi.structure.problem import Problem
from avi.structure.program import evaluate_points
from avi.structure.wording import join, offsets_phrase

RTOL = 1e-8
"""A derivative counts as non-zero above RTOL times the largest of its table (float64 noise)."""


class Edge(NamedTuple):
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
class LocalWindow:
    """The data a local latent's optimal factor depends on, or why no fixed window exists.

    Attributes:
        local: the local latent site.
        links: (input label, offset) -> the factors carrying it.
        problem: why the dependency has no fixed window (dense), or None.
    """

    local: str
    links: dict[tuple[str, int], frozenset[str]]
    problem: str | None


def dependencies(problem: Problem, design: Design) -> tuple[set[Edge], set[Edge]]:
    """Coupling edges (between local latents of different data) and data edges."""
    directions, swaps = make_probes(problem, design)
    names = list(problem.locals)
    real = [problem.inputs[i].label for i in positions(problem, discrete=False)]
    discrete = [problem.inputs[i].label for i in positions(problem, discrete=True)]
    coupling: set[Edge] = set()
    data: set[Edge] = set()
    for tables in evaluate_points(problem, design, directions, swaps):
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


def local_window(local: str, edges: Sequence[Edge], size: int) -> LocalWindow:
    """The window of offsets the optimal factor of ``local`` depends on, if there is one.

    The window is the union of the offsets found at every probed datum: data at the ends lack
    some neighbours (Remark 3.7), and masks or discrete data can make a dependency vanish at
    some data, so the sets need not be equal. There is no fixed window (the dependency is
    dense) when it reaches beyond the probed neighbourhood or spans the whole analysed series.
    """
    if any(e.offset is None for e in edges):
        sources = sorted({e.source for e in edges if e.offset is None})
        return LocalWindow(local, {}, f"depends on {join(sources)} beyond {WINDOW} data away")
    offsets = {e.offset for e in edges}
    if offsets and max(offsets) - min(offsets) >= max(size - 1, 2):
        return LocalWindow(
            local,
            {},
            f"depends on {_describe_sources(edges)}: the whole analysed series of {size} data",
        )
    links: dict[tuple[str, int], set[str]] = {}
    for e in edges:
        links.setdefault((e.source, e.offset), set()).add(e.term)
    return LocalWindow(local, {k: frozenset(v) for k, v in links.items()}, None)


def _hits(
    table: Gradients, probes: Sequence[Probe], floor: Mapping[str, float | jax.Array]
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


def _coupling_edges(local: str, other: str, term: str, probe: Probe, row: np.ndarray) -> set[Edge]:
    """Edges from the Hessian column ``row`` (over data) of ``other`` along ``local`` at the
    probe's datum: every other datum with a non-zero mixed partial."""
    n = probe.center
    return {Edge(local, other, term, n, int(m) - n) for m in np.flatnonzero(row) if m != n}


def _data_edges(
    local: str, source: str, term: str, probe: Probe, row: np.ndarray, probes: Iterable[int]
) -> set[Edge]:
    """Edges from the changed gradients ``row`` (over data) when ``probe`` perturbs ``source``."""
    if probe.far:
        return {Edge(local, source, term, probe.center, None)} if row[probe.center] else set()
    return {Edge(local, source, term, n, probe.center - n) for n in probes if row[n]}


def _describe_sources(edges: Sequence[Edge]) -> str:
    """Each source of the edges with its offsets."""
    by_source: dict[str, set[int]] = {}
    for e in edges:
        by_source.setdefault(e.source, set()).add(e.offset)
    return join([f"{s} at {offsets_phrase(o)}" for s, o in sorted(by_source.items())])
