"""The derivative probes that reveal a local latent's Markov blanket.

The optimal factor q*(z_n) of Lemma 3.1 depends on exactly what shares a non-separable factor
log p_s of the joint with z_n. With g_s = d log p_s / dz at a point of the latents:

* z_n and z_m are coupled through s iff the mixed partial d^2 log p_s / dz_n dz_m != 0. One
  Hessian-vector product (``jax.jvp`` of ``jax.jacrev``) along a random direction of z_n's
  coordinates gives the whole column (:func:`along`, a local latent's slot).
* z_n depends on datum m of a real-valued data array x (an observed site or a per-datum argument)
  through s iff d g_s(z_n) / dx_m != 0 along a random direction of row m (a Jacobian-vector
  product, :func:`along`, a real input's slot). For a discrete array (counts, indices), iff
  g_s(z_n) changes when row m is swapped for another datum's row (two donors: the most different
  row, and the one whose sum differs most; :func:`swapped`).

Which data are probed is the :class:`Design`: every datum of a small problem, or two interior
data of a large one, with ``WINDOW`` neighbours on each side and one joint perturbation of all
farther rows, so the work stays O(N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from avi.structure.density import Gradients, site_gradients
from avi.structure.problem import SUB_SIZE, Problem

WINDOW = 15
"""Neighbours probed on each side when the full data must be analysed."""


@dataclass(frozen=True)
class Design:
    """Which data are probed (z_n examined) and which rows of the inputs are perturbed.

    ``window`` is None when every datum is probed and every row perturbed; otherwise the rows
    farther than ``window`` from a probe are also perturbed jointly, once per probe.
    """

    probes: tuple[int, ...]
    rows: tuple[int, ...]
    window: int | None


class Probe(NamedTuple):
    """One row of a table: a direction or a swap centred on one datum.

    ``slot`` indexes the local latents then the real inputs (directions), or the discrete
    inputs (swaps); ``far`` perturbs every row farther than the window from ``center`` instead;
    ``donor`` picks the row swapped in (0: the most different, 1: the sum most different).
    """

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
    """Probe every datum of a small problem; two interior data of a large one."""
    if size <= SUB_SIZE:
        every = tuple(range(size))
        return Design(every, every, None)
    probes = (size // 3, 2 * size // 3)
    rows = {m for p in probes for m in range(max(p - WINDOW, 0), min(p + WINDOW + 1, size))}
    return Design(probes, tuple(sorted(rows)), WINDOW)


def make_probes(problem: Problem, design: Design) -> tuple[list[Probe], list[Probe]]:
    """Direction probes (local latents, then real inputs) and swap probes (discrete inputs)."""
    num_locals = len(problem.locals)
    num_real = sum(not item.discrete for item in problem.inputs)
    num_discrete = len(problem.inputs) - num_real
    far = [Probe(0, p, True) for p in design.probes] if design.window is not None else []
    directions = [Probe(j, n) for j in range(num_locals) for n in design.probes]
    directions += [
        probe._replace(slot=num_locals + k)
        for k in range(num_real)
        for probe in [Probe(0, m) for m in design.rows] + far
    ]
    swaps = [
        probe._replace(slot=k)
        for k in range(num_discrete)
        for probe in [Probe(0, m, False, d) for m in design.rows for d in (0, 1)] + far
    ]
    return directions, swaps


def positions(problem: Problem, discrete: bool) -> list[int]:
    """Positions in ``problem.inputs`` of the discrete (or of the real) inputs."""
    return [i for i, item in enumerate(problem.inputs) if item.discrete == discrete]


def along(
    problem: Problem, point: Point, noise: Sequence[jax.Array], window: int, probe: jax.Array
) -> Gradients:
    """|d g_s / d(direction)| per datum, the direction being the probe's rows of its slot's noise.

    For a local latent's slot this is a Hessian-vector product (the coupling column); for a real
    input's slot, a mixed derivative in the data.
    """
    slot, center, far = probe[0], probe[1], probe[2].astype(bool)
    names = list(problem.locals)
    real = positions(problem, discrete=False)
    slots = [(point.u[n], problem.locals[n]) for n in names]
    slots += [(point.data[i], problem.inputs[i].axis) for i in real]
    tangents = [
        jnp.where((slot == j) & _rows(x.shape, axis, center, far, window), n, 0).astype(x.dtype)
        for j, ((x, axis), n) in enumerate(zip(slots, noise, strict=True))
    ]

    def gradients(u: Mapping[str, jax.Array], values: list[jax.Array]) -> Gradients:
        return site_gradients(problem, point.u_globals, u, _replace(point.data, real, values))

    primals = (point.u, [point.data[i] for i in real])
    u_dot = dict(zip(names, tangents[: len(names)], strict=True))
    return _summarise(problem, jax.jvp(gradients, primals, (u_dot, tangents[len(names) :]))[1])


def swapped(problem: Problem, point: Point, window: int, probe: jax.Array) -> Gradients:
    """|g_s after the probe's swap - g_s| per datum."""
    slot, center, far = probe[0], probe[1], probe[2].astype(bool)
    discrete = positions(problem, discrete=True)
    values = []
    for k, i in enumerate(discrete):
        x, axis = point.data[i], problem.inputs[i].axis
        rows = (slot == k) & _rows(x.shape, axis, center, far, window)
        values.append(_swap(x, axis, rows, probe))
    data = _replace(point.data, discrete, values)
    gradients = site_gradients(problem, point.u_globals, point.u, data)
    return _summarise(problem, jax.tree.map(jnp.subtract, gradients, point.base))


def _per_datum(array: jax.Array, axis: int) -> jax.Array:
    """max |array| over every coordinate of each datum, ``axis`` running along the data."""
    moved = jnp.moveaxis(jnp.abs(array), axis, 0)
    return jnp.max(moved.reshape(moved.shape[0], -1), axis=1)


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
    rows = jnp.where(far, jnp.abs(index - center) > window, index == center)
    return rows.reshape((-1,) + (1,) * (len(shape) - axis - 1))


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


def _replace(
    data: Sequence[jax.Array], at: Sequence[int], values: Sequence[jax.Array]
) -> list[jax.Array]:
    """``data`` with the arrays at the positions ``at`` replaced by ``values``."""
    replaced = list(data)
    for i, value in zip(at, values, strict=True):
        replaced[i] = value
    return replaced
