"""Verify on all N data what the analysis found on the first k < N (a large problem's prefix).

The derivative probes (:mod:`avi.structure.dependencies`) run on the first k data when the whole
problem exceeds the element budget. What they found is a claim about every datum n:

    g(z_n) = d log p / dz_n depends on (theta, z_n, (x_{n+j})_{j in K}, S(x)) only,

K the window and S symmetric summaries of the data (mean, sd, sum), with no other local latent
z_m and no function of the index n (exchangeability, Definition 3.3). Two evaluations of g on the
whole problem test it at P data n_1 < ... < n_P drawn over the whole range (the last interior
datum included), at random points of the latents:

* far permutation: permute jointly, by one random permutation pi, the rows of every per-datum
  array and of the local latents at every datum outside E = U_p (n_p + K). Each n_p's window and
  z_{n_p} are untouched and the multiset of the data is the same, so S is too: under the claim
  g(z_{n_p}) is unchanged. A dependence beyond the window (a lag longer than k, a coupling to
  another z_m, a non-symmetric mixing of the data), smooth or not, changes it.
* exchange: swap the windows n + K <-> m + K of disjoint pairs (n, m) spread over the range, and
  z_n <-> z_m, all at once. Under the claim g(z_n) after equals g(z_m) before; a distribution that
  depends on the index (a regime past some n, a trend) breaks it.

Both compare float64 gradients up to rounding (relative RTOL of the largest |g|). The program is
compiled once per model and shapes, like the prefix's (:mod:`avi.structure.program`). Problems
above VERIFY_BUDGET elements are not evaluated whole: the verdict is then left unverified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from avi.errors import ModelError
from avi.model import Model, ModelLayout
from avi.structure.density import input_arrays, total_gradient
from avi.structure.problem import Problem, analysed_problem, elements
from avi.structure.program import at_points, evaluator, jit, per_datum_arrays

VERIFY_BUDGET = 60_000_000
"""Array elements of the whole problem up to which it is evaluated whole (a few gradients)."""
NUM_PROBES = 32
"""Data spread over the whole range whose factors are tested."""
NUM_PAIRS = 16
"""Disjoint pairs of data whose windows are exchanged."""
RTOL = 1e-7
"""A change of g beyond rounding: above RTOL times the largest |g| of the local latent."""


class Verification(NamedTuple):
    """The outcome of the test on the whole problem.

    Attributes:
        verified: whether the claim held at every tested datum and pair.
        reason: why not, in words ('' when verified).
        probes: the number of data tested.
    """

    verified: bool
    reason: str
    probes: int


def verify_beyond(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    layout: ModelLayout,
    prefix: Problem,
    offsets: tuple[int, ...],
) -> Verification:
    """Test the prefix's window ``offsets`` (summaries allowed) on all the data."""
    try:
        whole = analysed_problem(model, args, kwargs, layout, whole=True)
    except ModelError as error:
        return Verification(False, f"the model could not be traced on all data ({error})", 0)
    if elements(whole.sites) > VERIFY_BUDGET:
        return Verification(
            False,
            f"the whole problem holds {elements(whole.sites):,} array elements, more than the "
            f"{VERIFY_BUDGET:,} avi.check evaluates at once",
            0,
        )
    if set(whole.locals) != set(prefix.locals) or [i.label for i in whole.inputs] != [
        i.label for i in prefix.inputs
    ]:
        return Verification(False, "the whole model's local latents or data differ from its "
                            "prefix's", 0)
    size = whole.size
    probes, permutation = _far_design(size, offsets)
    pairs, swap_index, one = _exchange_design(size, offsets)
    if not probes:
        return Verification(False, "no datum has its whole window inside the data", 0)
    evaluate = evaluator(whole, ("beyond", offsets, size), _program)
    indices = [jnp.asarray(a) for a in (permutation, swap_index, one, probes)]
    pair_n = jnp.asarray([n for n, _ in pairs] or [0])
    pair_m = jnp.asarray([m for _, m in pairs] or [0])
    try:
        found = at_points(
            whole,
            lambda point: evaluate(per_datum_arrays(whole), *point[:2], *indices, pair_n, pair_m),
        )
    except ModelError as error:
        return Verification(False, str(error), 0)
    for (far, far_scale, swap, swap_scale), _ in found:
        far, swap = np.asarray(far), np.asarray(swap)
        moved = np.flatnonzero((far > RTOL * np.asarray(far_scale) + 1e-300).any(axis=1))
        if moved.size:
            return Verification(
                False,
                f"beyond them, datum {probes[moved[0]]}'s optimal factor changes when data "
                f"outside its window {offsets} are permuted (a dependence the first "
                f"{prefix.size} data do not show: a longer lag, a coupling, or one that is no "
                "symmetric summary)",
                len(probes),
            )
        changed = (swap > RTOL * np.asarray(swap_scale) + 1e-300).any(axis=1)
        swapped = np.flatnonzero(changed) if pairs else []
        if len(swapped):
            n, m = pairs[int(swapped[0])]
            return Verification(
                False,
                f"beyond them, exchanging the windows of data {n} and {m} changes the optimal "
                "factor (a distribution that depends on the datum's position)",
                len(probes),
            )
    return Verification(True, "", len(probes))


def _far_design(size: int, offsets: tuple[int, ...]) -> tuple[list[int], np.ndarray]:
    """Probed data (interior, spread at random over the range, the last one included) and a
    random permutation of the rows outside their windows."""
    low, high = max(0, -min(offsets)), size - max(0, max(offsets))
    if high <= low:
        return [], np.arange(size)
    rng = np.random.default_rng(12)
    count = min(NUM_PROBES - 1, high - low)
    probes = sorted({*rng.choice(np.arange(low, high), count, replace=False).tolist(), high - 1})
    kept = np.zeros(size, bool)
    kept[(np.asarray(probes)[:, None] + np.asarray(offsets)[None]).ravel()] = True
    free = np.flatnonzero(~kept)
    permutation = np.arange(size)
    permutation[free] = rng.permutation(free)
    return probes, permutation


def _exchange_design(
    size: int, offsets: tuple[int, ...]
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Disjoint pairs (n, m) over the range, both ways, and the index maps that swap their
    windows (data) and themselves (local latents)."""
    low, high = max(0, -min(offsets)), size - max(0, max(offsets))
    span = max(offsets) - min(offsets) + 1
    grid = np.arange(low, high, span)
    rng = np.random.default_rng(13)
    chosen = rng.choice(grid, min(2 * NUM_PAIRS, len(grid) // 2 * 2), replace=False).tolist()
    half = len(chosen) // 2
    pairs = list(zip(chosen[:half], chosen[half:], strict=True))
    index, one = np.arange(size), np.arange(size)
    ks = np.asarray(offsets)
    for n, m in pairs:
        index[n + ks], index[m + ks] = m + ks, n + ks
        one[n], one[m] = m, n
    return pairs + [(m, n) for n, m in pairs], index, one


def _program(problem: Problem):
    """The compiled test: (far change, scale) per probe and (exchange change, scale) per pair."""

    def permuted(data, u, index, rows):
        data = [
            jnp.take(x, index, axis=item.axis) if item.along else x
            for x, item in zip(data, problem.inputs, strict=True)
        ]
        return {n: jnp.take(v, rows, axis=problem.locals[n]) for n, v in u.items()}, data

    def at(g: dict[str, jax.Array], where: jax.Array) -> jax.Array:
        """max over each local's coordinates of |g| at the data ``where``: (len(where), L)."""
        return jnp.stack(
            [
                jnp.max(jnp.abs(jnp.moveaxis(jnp.take(g[n], where, axis=a), a, 0))
                        .reshape(where.shape[0], -1), axis=1, initial=0.0)
                for n, a in problem.locals.items()
            ],
            axis=1,
        )

    def evaluate(arrays, u_globals, u, permutation, swap_index, one, probes, pair_n, pair_m):
        data = input_arrays(problem, {**u_globals, **u}, arrays)
        base = total_gradient(problem, u_globals, u, data)
        scale = jnp.stack([jnp.max(jnp.abs(g), initial=0.0) for g in base.values()])
        after = total_gradient(problem, u_globals, *permuted(data, u, permutation, permutation))
        far = at(jax.tree.map(jnp.subtract, after, base), probes)
        swapped = total_gradient(problem, u_globals, *permuted(data, u, swap_index, one))
        diff = {
            n: jnp.take(swapped[n], pair_n, axis=a) - jnp.take(base[n], pair_m, axis=a)
            for n, a in problem.locals.items()
        }
        swap = at(diff, jnp.arange(pair_n.shape[0]))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in base.values()]))
        return (far, scale[None], swap, scale[None]), {"g": finite}

    return jit(evaluate)
