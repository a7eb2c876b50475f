"""The dependency edges of the local latents' optimal factors, their windows, global summaries.

By Lemma 3.1 the optimal factor q*(z_n) depends on exactly the data and latents that share a
non-separable factor of the joint with z_n. The probes' tables (:mod:`avi.structure.program`)
give the rows r_n(m) = d g(z_n) / dx_m over every datum m, for the probed data n. They split as

    r_n = c_n^T W + l_n,

a low-rank part shared by all data (a global summary S(x) of the data, such as its mean or sd:
dS/dx has rank k and g(z_n) depends on it through k numbers c_n) and a local part l_n supported
on the window n + K. A summary is the same for every n, so it acts like a global parameter fixed
by the data (Theorem 3.4's global influence) and an encoder of the window can represent it. W's
row space is estimated from the columns far from every probe where every row is non-zero (rank
at most MAX_SUMMARY_RANK); each column's coefficients from the probes it is far from; what is left
is the window. Couplings to other data's local latents (as in a hidden Markov model) come from
the coupling rows; data outside the data plate that some local latent depends on, datum by datum,
is invisible to an encoder of the plate's data.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from avi.structure.probes import (
    DISCRETE_WINDOW,
    Design,
    Probe,
    discrete_positions,
    real_positions,
    swap_probes,
)
from avi.structure.problem import Problem
from avi.structure.program import Exchange, evaluate_points
from avi.structure.wording import join, offsets_phrase

RTOL = 1e-8
"""A derivative counts as non-zero above RTOL times the largest of its table (float64 noise)."""
RESIDUAL_RTOL = 1e-6
"""A column's deviation from the global summary counts as local above this relative size."""
MAX_SUMMARY_RANK = 3
"""Largest dimension of a global summary of one data array (mean, sd, sum, ...)."""
SUMMARY_SHARE = 0.75
"""Share of the dense columns a summary must explain when the window is mixed into it."""
MAX_LOCAL_COLUMNS = 512
"""Columns left unexplained by a summary beyond which the dependence is dense."""


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


@dataclass
class Findings:
    """Everything the probes found.

    Attributes:
        coupling: edges between local latents of different data.
        data: edges to data at offsets from the datum.
        summaries: (local, input label) -> factors through which a global summary of that data
            array enters the local latent's optimal factor.
        unseen: (local, observed site label) -> factors: data outside the data plate that the
            optimal factor depends on datum by datum.
        siblings: (local, other local) sharing a factor of the joint at the same datum (w_n in
            the prior of z_n): by Lemma 3.1 the optimal factor of each depends on the other's,
            hence on the data the other depends on.
        exchanges: per random point, the exchange probe of the window guessed by
            :func:`dependencies`' caller, or None when none was guessed.
    """

    coupling: set[Edge] = field(default_factory=set)
    siblings: set[tuple[str, str]] = field(default_factory=set)
    data: set[Edge] = field(default_factory=set)
    summaries: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    unseen: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    exchanges: list[tuple[np.ndarray, np.ndarray]] | None = None


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


def dependencies(problem: Problem, design: Design, exchange: Exchange | None = None) -> Findings:
    """Couplings, data edges, global summaries and unseen data of every local latent, and the
    exchange probe of a guessed window (``exchange``, evaluated in the same program)."""
    names = list(problem.locals)
    row_probes = [Probe(k, n) for k in range(len(names)) for n in design.probes]
    swaps = swap_probes(problem, design)
    real = [problem.inputs[i] for i in real_positions(problem)]
    discrete = [problem.inputs[i].label for i in discrete_positions(problem)]
    valued = {problem.inputs[i].label for i in discrete_positions(problem)
              if problem.inputs[i].valued}
    blocks = design.window is not None
    found, swapped = Findings(), set()
    points = evaluate_points(problem, design, row_probes, swaps, exchange)
    if exchange:
        found.exchanges = [(np.asarray(t.exchange[0]), np.asarray(t.exchange[1])) for t in points]
    for tables in points:
        for k, local in enumerate(names):
            idx = [j for j, p in enumerate(row_probes) if p.slot == k]
            for s, by_local in tables.coupling.items():
                for other, table in by_local.items():
                    edges = _coupling_edges(local, other, s, design.probes,
                                            np.asarray(table)[idx], same=other != local)
                    found.coupling |= {e for e in edges if e.offset != 0}
                    found.siblings |= {(local, other) for e in edges if e.offset == 0}
            for position, item in enumerate(real):
                per_site = {s: np.asarray(t[position])[idx] for s, t in tables.data.items()}
                _data_findings(found, local, item.label, item.along, per_site, design, blocks)
        if tables.swaps is not None:
            for (term, local), hits in _swap_hits(tables.swaps, swaps, tables.magnitude).items():
                for probe, row in zip(swaps, hits, strict=True):
                    swapped |= _swap_edges(local, discrete[probe.slot], term, probe, row,
                                           design.probes)
    # a swap changes a summary of integer values (a mean of counts) that the derivatives
    # separated; what they cannot see there is left to the permutation test (beyond)
    found.data |= {e for e in swapped
                   if not (e.source in valued and (e.local, e.source) in found.summaries)}
    return found


def local_window(local: str, edges: Sequence[Edge], size: int) -> LocalWindow:
    """The window of offsets the optimal factor of ``local`` depends on, if there is one.

    The window is the union of the offsets found at every probed datum: data at the ends lack
    some neighbours (Remark 3.7), and masks or discrete data can make a dependency vanish at
    some data, so the sets need not be equal. There is no fixed window (the dependency is
    dense) when it reaches beyond the probed neighbourhood of a discrete input or spans half
    the analysed series or more.
    """
    if any(e.offset is None for e in edges):
        sources = sorted({e.source for e in edges if e.offset is None})
        return LocalWindow(
            local, {}, f"depends on {join(sources)} beyond {DISCRETE_WINDOW} data away"
        )
    offsets = {e.offset for e in edges}
    if offsets and max(offsets) - min(offsets) >= max(size // 2, 2):
        return LocalWindow(
            local,
            {},
            f"depends on {_describe_sources(edges)}: a span of half the analysed series of "
            f"{size} data or more, with no low-dimensional summary shared by all data",
        )
    links: dict[tuple[str, int], set[str]] = {}
    for e in edges:
        links.setdefault((e.source, e.offset), set()).add(e.term)
    return LocalWindow(local, {k: frozenset(v) for k, v in links.items()}, None)


def decompose(
    rows: np.ndarray, probes: Sequence[int], blocks: bool
) -> tuple[list[tuple[int, int]], int]:
    """Split rows r_n (P, size, d) into a global summary of rank r and local entries.

    Returns:
        The local entries (probe row i, datum m) and the summary's rank r (0 when none, -1
        when the dependence is dense: spread over all data but not through a summary).
    """
    scale = float(np.max(np.abs(rows), initial=0.0))
    if scale == 0.0:
        return [], 0
    nonzero = np.abs(rows) > RTOL * scale
    every = [(int(i), int(m)) for i, m in zip(*np.nonzero(nonzero.any(axis=2)), strict=True)]
    if not blocks:
        spans = {m - probes[i] for i, m in every}
        if spans and max(spans) - min(spans) >= max(rows.shape[1] // 2, 2):
            banded = _banded_decompose(rows, probes, scale)
            if banded is not None:
                return banded
        return every, 0
    probes_ = np.asarray(probes)
    index = np.arange(rows.shape[1])
    dense = _dense(nonzero)
    sparse = nonzero & ~dense[None]
    reach = [abs(int(m) - int(probes_[i])) for i, m, _ in zip(*np.nonzero(sparse), strict=True)]
    start = max(reach, default=0)
    distance = np.abs(index[None, :] - probes_[:, None])  # (P, size)
    # the summary's columns lie far from every probe; a window's mixed columns (window plus
    # summary, non-zero in every row) lie near: widen the exclusion until the rank is least
    # (it never grows as columns are dropped; a window's columns left in add to it)
    # (an exclusion that leaves no dense column shows nothing: a summary whose derivative lives
    # on a few data, such as a median or a maximum, would vanish from the basis just because
    # its columns happen to lie near a probe)
    best = None
    for near in sorted({start} | {d for d in 2 ** np.arange(20) if start < d <= len(index) // 8}):
        far_rows_ = distance > near
        kept = dense & far_rows_.all(axis=0)[:, None]
        if best is not None and not kept.any():
            break
        rank_, basis_ = _rank(rows[:, kept])
        if best is None or rank_ < best[0]:
            best = (rank_, basis_, far_rows_)
        if rank_ == 0:
            break
    rank, basis, far_rows = best
    robust = _robust_decompose(rows, scale)
    if rank > MAX_SUMMARY_RANK:
        return robust if robust[1] >= 0 else (every, -1)
    if rank == 0:
        return robust if robust[1] > 0 and len(robust[0]) < len(every) else (every, 0)
    residual = np.array(rows)
    patterns, inverse = np.unique(far_rows.T, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols = inverse.reshape(-1) == p
        u = basis[pattern]
        if pattern.sum() >= rank and np.linalg.matrix_rank(u) == rank:
            block = rows[:, cols].reshape(len(probes_), -1)
            coefficients = np.linalg.lstsq(u, block[pattern], rcond=None)[0]
            residual[:, cols] = (block - basis @ coefficients).reshape(residual[:, cols].shape)
    local = np.abs(residual) > RESIDUAL_RTOL * scale
    entries = [(int(i), int(m)) for i, m in zip(*np.nonzero(local.any(axis=2)), strict=True)]
    # a window longer than the exclusion radius pollutes the basis: the fewer local entries win
    if robust[1] >= 0 and len(robust[0]) < len(entries):
        return robust
    return entries, rank


def _banded_decompose(
    rows: np.ndarray, probes: Sequence[int], scale: float
) -> tuple[list[tuple[int, int]], int] | None:
    """:func:`decompose` on a small problem, where every datum is probed and no column lies far
    from every probe: the table is r_n(m) = c_n^T W_m + l_n(m), l_n supported on a band
    |m - n| <= b. For the narrowest band b (below half the data) and least rank r <=
    MAX_SUMMARY_RANK such that the entries outside the band are exactly (up to RESIDUAL_RTOL) a
    rank-r matrix, with enough of them to determine it, the local entries are those of the band
    that the rank-r matrix does not explain. None when no band and rank do (a dense
    dependence: a kernel smoother, a cumulative sum).
    """
    count, size, width = rows.shape
    matrix = rows.reshape(count, size * width)
    offset = (np.arange(size)[None, :] - np.asarray(probes)[:, None])  # (P, size)
    tol = RESIDUAL_RTOL * scale
    for band in range(max(size // 2, 1)):
        outside = np.repeat(np.abs(offset) > band, width, axis=1)
        for rank in range(1, MAX_SUMMARY_RANK + 1):
            if outside.sum() < (count + size * width) * rank + count:
                break
            fitted = _complete(matrix, outside, rank)
            if np.max(np.abs(np.where(outside, matrix - fitted, 0.0))) <= tol:
                local = np.abs(matrix - fitted).reshape(count, size, width) > tol
                return [(int(i), int(m)) for i, m in
                        zip(*np.nonzero(local.any(axis=2)), strict=True)], rank
    return None


def _complete(matrix: np.ndarray, known: np.ndarray, rank: int, steps: int = 300) -> np.ndarray:
    """A rank-``rank`` matrix fitted to the ``known`` entries of ``matrix`` (alternating least
    squares from the truncated SVD of the known entries)."""
    u, s, vt = np.linalg.svd(np.where(known, matrix, 0.0), full_matrices=False)
    left, right = u[:, :rank] * s[:rank], vt[:rank].T
    target = 1e-3 * RESIDUAL_RTOL * max(float(np.max(np.abs(matrix))), 1e-300)
    previous = np.inf
    for step in range(steps):
        for j in range(matrix.shape[1]):
            rows_ = known[:, j]
            right[j] = np.linalg.lstsq(left[rows_], matrix[rows_, j], rcond=None)[0]
        for i in range(matrix.shape[0]):
            cols = known[i]
            left[i] = np.linalg.lstsq(right[cols], matrix[i, cols], rcond=None)[0]
        error = float(np.max(np.abs(np.where(known, matrix - left @ right.T, 0.0))))
        if error <= target:
            break
        # stalled (not halved in 10 steps): an exactly low-rank table converges, a dense one not
        if step % 10 == 9:
            if error > 0.5 * previous:
                break
            previous = error
    return left @ right.T


def _by_coordinate(rows: np.ndarray, probes: Sequence[int]) -> tuple[list[tuple[int, int]], int]:
    """:func:`decompose` coordinate by coordinate of the data (a summary per feature, such as
    the mean of each column of x, has rank up to MAX_SUMMARY_RANK in each)."""
    entries: set[tuple[int, int]] = set()
    rank = 0
    for j in range(rows.shape[2]):
        found, r = decompose(rows[:, :, j : j + 1], probes, True)
        if r < 0:
            return found, -1
        entries |= set(found)
        rank = max(rank, r)
    return sorted(entries), rank


def _robust_decompose(rows: np.ndarray, scale: float) -> tuple[list[tuple[int, int]], int]:
    """:func:`decompose` when no exclusion around the probes isolates the summary (a window
    longer than the exclusion radius, mixed with a summary).

    The summary's columns are the many: normalised to unit length, at least SUMMARY_SHARE of
    the dense columns lie in the span U of the top r <= MAX_SUMMARY_RANK left singular vectors.
    In every other column the rows carrying a local entry are removed greedily (largest
    residual first) until the rest is c_m^T U up to RESIDUAL_RTOL * scale: those rows are its
    local entries. Entries of columns zero in half the rows or more are local too, as are those of
    rows non-zero in at most half the columns (a summary's coefficient below rounding there).
    """
    tol = RESIDUAL_RTOL * scale
    nonzero = np.abs(rows) > RTOL * scale
    summary_rows = nonzero.any(axis=2).sum(axis=1) > rows.shape[1] // 2
    dense = _dense(nonzero[summary_rows]) if summary_rows.any() else nonzero[0] & False
    matrix = rows[summary_rows][:, dense]  # (P', columns)
    if matrix.shape[1] == 0 or matrix.shape[0] < 2:
        return [], -1
    where = np.argwhere(dense)
    unit = matrix / np.linalg.norm(matrix, axis=0)
    for rank in range(1, MAX_SUMMARY_RANK + 1):
        inliers = np.ones(unit.shape[1], bool)
        for _ in range(3):  # refit on the columns the basis explains best (drops the window's)
            basis = np.linalg.svd(unit[:, inliers], full_matrices=False)[0][:, :rank]
            residual = np.linalg.norm(unit - basis @ (basis.T @ unit), axis=0)
            inliers = residual <= np.quantile(residual, SUMMARY_SHARE)
        off = residual > RESIDUAL_RTOL
        if off.mean() <= 1 - SUMMARY_SHARE:
            break
    else:
        return [], -1
    if off.sum() > MAX_LOCAL_COLUMNS:
        return [], -1
    outside = ~(summary_rows[:, None, None] & dense[None])
    local = {(int(i), int(m)) for i, m, _ in zip(*np.nonzero(outside & nonzero), strict=True)}
    numbers = np.flatnonzero(summary_rows)
    for column in np.flatnonzero(off):
        rows_ = _local_rows(matrix[:, column], basis, tol)
        local |= {(int(numbers[i]), int(where[column][0])) for i in rows_}
    return sorted(local), rank


def _local_rows(values: np.ndarray, basis: np.ndarray, tol: float) -> tuple[int, ...]:
    """The fewest rows whose removal leaves ``values`` = basis c (at least rank + 1 rows left to
    confirm the fit, up to ``tol``); every row when none does."""
    count, rank = len(values), basis.shape[1]
    for removed in range(1, count - rank):
        for rows_ in itertools.combinations(range(count), removed):
            keep = np.ones(count, bool)
            keep[list(rows_)] = False
            c = np.linalg.lstsq(basis[keep], values[keep], rcond=None)[0]
            if np.max(np.abs(values[keep] - basis[keep] @ c)) <= tol:
                return rows_
    return tuple(range(count))


def _dense(nonzero: np.ndarray) -> np.ndarray:
    """The columns non-zero in more than half the rows (axis 0): a summary's.

    A window's column is non-zero only in the rows of the probes it neighbours; a summary's in
    every row, except where a row's coefficient on the summary is small enough by chance that
    one entry reads as zero (below RTOL of the table's largest), which must not make the column
    a window's reaching across the data.
    """
    return nonzero.sum(axis=0) > nonzero.shape[0] // 2


def _rank(matrix: np.ndarray) -> tuple[int, np.ndarray]:
    """Numerical rank (singular values above 1e-7 of the largest) and the left basis."""
    if matrix.size == 0:
        return 0, np.zeros((matrix.shape[0], 0))
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    rank = int(np.sum(s > 1e-7 * s[0])) if s[0] > 0 else 0
    return rank, u[:, :rank]


def _data_findings(
    found: Findings,
    local: str,
    source: str,
    along: bool,
    per_site: dict[str, np.ndarray],
    design: Design,
    blocks: bool,
) -> None:
    """Add the edges, summary or unseen dependence of ``local`` on one real data array."""
    total = sum(per_site.values())
    scale = float(np.max(np.abs(total), initial=0.0))
    if scale == 0.0:
        return
    terms = {s for s, r in per_site.items() if np.max(np.abs(r), initial=0.0) > RTOL * scale}
    if not along:
        nonzero = np.abs(total) > RTOL * scale
        dense = _dense(nonzero)
        rank, _ = _rank(total[:, dense])
        if (nonzero & ~dense[None]).any() or rank > MAX_SUMMARY_RANK:
            found.unseen.setdefault((local, source), set()).update(terms)
        elif rank > 0:
            found.summaries.setdefault((local, source), set()).update(terms)
        return
    entries, rank = decompose(total, design.probes, blocks)
    if rank < 0 and total.shape[2] > 1:
        entries, rank = _by_coordinate(total, design.probes)
    if rank > 0:
        found.summaries.setdefault((local, source), set()).update(terms)
    for i, m in entries:
        n = design.probes[i]
        for s, r in per_site.items():
            if np.max(np.abs(r[i, m]), initial=0.0) > RTOL * scale:
                found.data.add(Edge(local, source, s, n, m - n))


def _coupling_edges(
    local: str,
    other: str,
    term: str,
    probes: Sequence[int],
    table: np.ndarray,
    same: bool = False,
) -> set[Edge]:
    """Edges from the coupling rows (P, size) of ``other`` along ``local`` at the probed data:
    every other datum with a non-zero mixed partial (relative to the table's largest entry),
    and the same datum too (offset 0) when ``same``."""
    largest = np.finfo(np.float64).max  # an infinite entry counts as the largest finite one
    scale = float(np.inf if np.isnan(table).any() else min(table.max(initial=0.0), largest))
    if scale == 0.0:
        return set()
    hits = ~(table <= RTOL * scale)
    return {
        Edge(local, other, term, n, int(m) - n)
        for i, n in enumerate(probes)
        for m in np.flatnonzero(hits[i])
        if m != n or same
    }


def _swap_hits(table, probes: Sequence[Probe], floor) -> dict[tuple[str, str], np.ndarray]:
    """(site, local) -> (K, size) booleans: the swap changes above RTOL times a reference.

    The reference of site s is the largest entry of s among the probes of the same slot, or
    ``floor[s]`` (the largest |g_s|) if larger; NaN counts as a hit.
    """
    slots = np.array([p.slot for p in probes])
    hits = {}
    for s, by_local in table.items():
        values = {name: np.asarray(v) for name, v in by_local.items()}
        # the largest entry of each row, NaN ignored (fmax skips NaN; no copy of the table)
        largest = np.stack(
            [np.nan_to_num(np.fmax.reduce(v, axis=1), nan=0.0) for v in values.values()]
        )
        reference = {k: max(largest[:, slots == k].max(), float(floor[s])) for k in set(slots)}
        scale = np.array([reference[k] for k in slots])[:, None]
        for name, v in values.items():
            hits[s, name] = ~(v <= RTOL * scale)
    return hits


def _swap_edges(
    local: str, source: str, term: str, probe: Probe, row: np.ndarray, probes: Sequence[int]
) -> set[Edge]:
    """Edges from the changed gradients ``row`` (over data) when ``probe`` swaps ``source``."""
    if probe.far:
        return {Edge(local, source, term, probe.center, None)} if row[probe.center] else set()
    return {Edge(local, source, term, n, probe.center - n) for n in probes if row[n]}


def _describe_sources(edges: Sequence[Edge]) -> str:
    """Each source of the edges with its offsets."""
    by_source: dict[str, set[int]] = {}
    for e in edges:
        by_source.setdefault(e.source, set()).add(e.offset)
    return join([f"{s} at {offsets_phrase(o)}" for s, o in sorted(by_source.items())])
