"""The derivative probes that reveal a local latent's Markov blanket, and the exchange probe.

The optimal factor q*(z_n) of Lemma 3.1 depends on exactly what shares a non-separable factor
log p_s of the joint with z_n. With g_s = d log p_s / dz at a point of the latents and a random
direction v of z_n's coordinates, one reverse pass of h_s = <v, g_s(z_n)> (:func:`rows`) gives

* the coupling row d^2 log p_s / dz_n dz_m for every m (z_n and z_m share the factor s iff it is
  non-zero), and
* the data row d g_s(z_n) / dx_m for every datum m of every real-valued data array x (observed
  sites, along the plate or not, and per-datum arguments),

so dependencies at any distance cost O(N) per probed datum. For a discrete array (counts,
indices), z_n depends on row m iff g_s(z_n) changes when row m is swapped for another datum's
row (two donors: the most different row, and the one whose sum differs most; :func:`swapped`),
probed within ``DISCRETE_WINDOW`` rows plus one joint perturbation of all farther rows. An
integer argument the model uses as values only (``Input.valued``) is differentiated as real data
too (a lag of any length, a summary of counts) and swapped within the window (a threshold on
counts, which derivatives miss); what lies farther is tested by the permutation of
:mod:`avi.structure.beyond`, which ``check`` then always runs.

The exchange probe (:func:`exchanged`) tests exchangeability (Definition 3.3: no distribution
depends on the index n): it swaps the windows (x_{n+k})_{k in K} <-> (x_{m+k})_{k in K} of every
per-datum array and z_n <-> z_m, and compares g(z_n) after the swap with g(z_m) before. The
multiset of the data is unchanged, so symmetric summaries (mean, sd, sum) are too; a difference
means the model treats positions n and m differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from avi.structure.density import Gradients, site_gradients
from avi.structure.problem import Problem

SMALL = 16
"""Problems of at most this many data have every datum probed."""
BLOCK = 4
"""Consecutive probed data in each of the two blocks (at N/4 and 3N/4) of a larger problem."""
DISCRETE_WINDOW = 15
"""Rows swapped one at a time on each side of a probed datum for discrete inputs."""


@dataclass(frozen=True)
class Design:
    """Which data are probed (z_n examined) and which rows of discrete inputs are swapped.

    ``window`` is None when every row is swapped; otherwise the rows farther than ``window``
    from a probe are also perturbed jointly, once per probe.
    """

    probes: tuple[int, ...]
    rows: tuple[int, ...]
    window: int | None


class Probe(NamedTuple):
    """A swap centred on one datum (``slot``: the discrete input), or a row probe (``slot``: the
    local latent). ``far`` perturbs every row farther than the window from ``center`` instead;
    ``donor`` picks the row swapped in (0: the most different, 1: the sum most different)."""

    slot: int
    center: int
    far: bool = False
    donor: int = 0


class Point(NamedTuple):
    """A random point inside the compiled program: unconstrained globals and locals, every
    input's array (aligned with ``problem.inputs``) and the gradients g_s there."""

    u_globals: dict[str, jax.Array]
    u: dict[str, jax.Array]
    data: list[jax.Array]
    base: Gradients


def design_for(size: int) -> Design:
    """Every datum of a small problem; two blocks of BLOCK consecutive data of a larger one."""
    if size <= SMALL:
        every = tuple(range(size))
        return Design(every, every, None)
    probes = tuple(start + j for start in (size // 4, 3 * size // 4) for j in range(BLOCK))
    w = DISCRETE_WINDOW
    rows = {m for p in probes for m in range(max(p - w, 0), min(p + w + 1, size))}
    return Design(probes, tuple(sorted(rows)), w)


def real_positions(problem: Problem) -> list[int]:
    """Positions in ``problem.inputs`` of the real-valued inputs (along the plate or not)."""
    return [i for i, item in enumerate(problem.inputs) if item.real]


def discrete_positions(problem: Problem) -> list[int]:
    """Positions in ``problem.inputs`` of the discrete inputs along the plate."""
    return [i for i, item in enumerate(problem.inputs) if item.discrete and item.along]


def swap_probes(problem: Problem, design: Design) -> list[Probe]:
    """Swap probes of every discrete input: each row near a probe (two donors; one for values,
    whose smooth dependence the derivatives find), and the far rows (not for values: the
    permutation test of :mod:`avi.structure.beyond` covers them)."""
    far = [Probe(0, p, True) for p in design.probes] if design.window is not None else []
    return [
        probe._replace(slot=k)
        for k, i in enumerate(discrete_positions(problem))
        for probe in [Probe(0, m, False, d) for m in design.rows
                      for d in ((0,) if problem.inputs[i].valued else (0, 1))]
        + ([] if problem.inputs[i].valued else far)
    ]


def rows(
    problem: Problem, point: Point, noise: Sequence[jax.Array], probe: jax.Array
) -> tuple[Gradients, dict[str, list[jax.Array]]]:
    """Coupling and data rows of h_s = <v, g_s(z_n)>, z_n being datum ``probe[1]`` of local
    latent number ``probe[0]`` and v its slice of ``noise``.

    Returns:
        site s -> local latent M -> max over coordinates |d h_s / du_M| per datum (size,), and
        site s -> per real input, d h_s / dx signed: (size, d) along the plate, flat outside.
    """
    slot, center = probe[0], probe[1]
    names = list(problem.locals)
    real = real_positions(problem)

    def h(u: dict[str, jax.Array], values: list[jax.Array]) -> dict[str, jax.Array]:
        data = _replace(point.data, real, values)
        gradients = site_gradients(problem, point.u_globals, u, data)
        out = {}
        for s, by_local in gradients.items():
            total = jnp.zeros(())
            for k, name in enumerate(names):
                g = by_local[name]
                mask = (slot == k) & _row_mask(g.shape, problem.locals[name], center)
                total = total + jnp.sum(jnp.where(mask, g * noise[k], 0.0))
            out[s] = total
        return out

    jac = jax.jacrev(h, argnums=(0, 1))(point.u, [point.data[i] for i in real])
    coupling = {
        s: {name: _per_datum(d_u[name], problem.locals[name]) for name in names}
        for s, (d_u, _) in jac.items()
    }
    data = {
        s: [_signed_rows(d, problem.inputs[i].axis) for d, i in zip(d_x, real, strict=True)]
        for s, (_, d_x) in jac.items()
    }
    return coupling, data


def swapped(problem: Problem, point: Point, window: int, probe: jax.Array) -> Gradients:
    """|g_s after the probe's swap - g_s| per datum."""
    slot, center, far = probe[0], probe[1], probe[2].astype(bool)
    discrete = discrete_positions(problem)
    values = []
    for k, i in enumerate(discrete):
        x, axis = point.data[i], problem.inputs[i].axis
        mask = (slot == k) & _rows(x.shape, axis, center, far, window)
        values.append(_swap(x, axis, mask, probe))
    data = _replace(point.data, discrete, values)
    gradients = site_gradients(problem, point.u_globals, point.u, data)
    return _summarise(problem, jax.tree.map(jnp.subtract, gradients, point.base))


def exchanged(
    problem: Problem, point: Point, offsets: tuple[int, ...], pair: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """max |g(z_n) after swapping the windows of n and m - g(z_m)| over the local latents'
    coordinates, and the larger of the two gradients' magnitudes (``pair`` = (n, m))."""
    n, m = pair[0], pair[1]
    size = problem.size
    ks = jnp.asarray(offsets)
    index = jnp.arange(size).at[n + ks].set(m + ks).at[m + ks].set(n + ks)
    one = jnp.arange(size).at[n].set(m).at[m].set(n)
    data = [
        jnp.take(x, index, axis=item.axis) if item.along else x
        for x, item in zip(point.data, problem.inputs, strict=True)
    ]
    u = {name: jnp.take(v, one, axis=problem.locals[name]) for name, v in point.u.items()}
    after = site_gradients(problem, point.u_globals, u, data)
    diff, scale = jnp.zeros(()), jnp.zeros(())
    for name, axis in problem.locals.items():
        a = jnp.take(sum(after[s][name] for s in after), n, axis=axis)
        b = jnp.take(sum(point.base[s][name] for s in point.base), m, axis=axis)
        diff = jnp.maximum(diff, jnp.max(jnp.abs(a - b), initial=0.0))
        scale = jnp.maximum(scale, jnp.max(jnp.maximum(jnp.abs(a), jnp.abs(b)), initial=0.0))
    return diff, scale


def _row_mask(shape: tuple[int, ...], axis: int, center: jax.Array) -> jax.Array:
    """Mask, broadcastable to ``shape``, of row ``center`` along ``axis``."""
    rows_ = jnp.arange(shape[axis]) == center
    return rows_.reshape((-1,) + (1,) * (len(shape) - axis - 1))


def _signed_rows(array: jax.Array, axis: int | None) -> jax.Array:
    """The array with the data axis first and each datum's coordinates flattened (flat if it
    has no data axis)."""
    if axis is None:
        return array.reshape(-1)
    moved = jnp.moveaxis(array, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def _per_datum(array: jax.Array, axis: int) -> jax.Array:
    """max |array| over every coordinate of each datum, ``axis`` running along the data."""
    return jnp.max(jnp.abs(_signed_rows(array, axis)), axis=1)


def _summarise(problem: Problem, gradients: Gradients) -> Gradients:
    """Per-datum magnitudes of gradient-shaped arrays: (size,) per site and local latent."""
    return {
        s: {name: _per_datum(g, problem.locals[name]) for name, g in by_local.items()}
        for s, by_local in gradients.items()
    }


def _rows(
    shape: tuple[int, ...], axis: int, center: jax.Array, far: jax.Array, window: int
) -> jax.Array:
    """Mask, broadcastable to ``shape``, of row ``center`` along ``axis`` (of the rows farther
    than ``window`` from it when ``far``)."""
    index = jnp.arange(shape[axis])
    mask = jnp.where(far, jnp.abs(index - center) > window, index == center)
    return mask.reshape((-1,) + (1,) * (len(shape) - axis - 1))


def _swap(x: jax.Array, axis: int, mask: jax.Array, probe: jax.Array) -> jax.Array:
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
    return jnp.where(mask, jnp.where(far, rolled, donor), x)


def _replace(
    data: Sequence[jax.Array], at: Sequence[int], values: Sequence[jax.Array]
) -> list[jax.Array]:
    """``data`` with the arrays at the positions ``at`` replaced by ``values``."""
    replaced = list(data)
    for i, value in zip(at, values, strict=True):
        replaced[i] = value
    return replaced


