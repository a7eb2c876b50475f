"""What the correlated Gaussian factors (:class:`avi.FullRank`, :class:`avi.LowRank`) share:
marginals of a piece of the coordinates, and the Fisher metric of any Gaussian family (which
:class:`avi.LowRank` uses; :class:`avi.FullRank` has a closed form of its own).

Fisher metric. For q = N(m, S) with (m, S) smooth in lambda, a tangent t of lambda moves the
mean by dm and the covariance by dS, and

    t^T F t = dm^T S^-1 dm + 1/2 ||C^-1 dS C^-T||_F^2,    S = C C^T

(the Gaussian's Fisher information in (m, S)). So ``whiten(t) = (C^-1 dm, C^-1 dS C^-T /
sqrt 2)`` is a square root of F, F = W^T W, and the natural-gradient gain of a gradient g is
1/2 g^T F^+ g = 1/2 ||u||^2 with u the least-norm solution of W^T u = g (F^+ where a
parameterisation is redundant, as a low-rank factor's rotations W -> W R are).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

Moments = Callable[[Mapping[str, jax.Array]], tuple[jax.Array, jax.Array]]
"""lambda of one datum -> (mean (D,), covariance (D, D))."""


def marginal(
    loc: jax.Array,
    covariance: jax.Array,
    piece: slice,
    arrange: Callable[[jax.Array], jax.Array],
) -> dist.Distribution:
    """N(loc, covariance) (leading axis (B,)) restricted to the coordinates ``piece``.

    One coordinate: ``Normal``. Several, when ``arrange`` keeps the (B, k) layout (a vector
    site on the plate's first axis): ``MultivariateNormal`` with the piece's covariance.
    Otherwise (a matrix-shaped site, a plate on another axis) the coordinates' exact marginals
    as independent ``Normal`` s laid out by ``arrange``: their correlation is not kept.
    """
    mean = loc[..., piece]
    block = covariance[..., piece, piece]
    size = mean.shape[-1]
    probe = np.arange(mean.shape[0] * size).reshape(mean.shape[0], size)
    if size > 1 and np.array_equal(np.asarray(arrange(jnp.asarray(probe))), probe):
        return dist.MultivariateNormal(mean, scale_tril=jnp.linalg.cholesky(block))
    scale = jnp.sqrt(jnp.diagonal(block, axis1=-2, axis2=-1))
    return dist.Normal(arrange(mean), arrange(scale))


def whiten(moments: Moments, lam: Mapping[str, jax.Array], tangent: Mapping[str, jax.Array]):
    """W t of one datum (see the module docstring): a flat vector whose squared norm is
    t^T F t."""
    (_, s), (dm, ds) = jax.jvp(moments, (dict(lam),), (dict(tangent),))
    chol = jnp.linalg.cholesky(s)
    solve = lambda b: jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    inner = solve(solve(ds).T).T
    return jnp.concatenate([solve(dm), inner.ravel() / jnp.sqrt(2.0)])


def fisher_product(
    moments: Moments, lam: Mapping[str, jax.Array], tangent: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """F t = W^T W t for every datum (leading axis (B,))."""

    def one(l: Mapping[str, jax.Array], t: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        w = lambda v: whiten(moments, l, v)
        return jax.linear_transpose(w, t)(w(t))[0]

    return jax.vmap(one)(dict(lam), dict(tangent))


def natural_units(
    moments: Moments, lam: Mapping[str, jax.Array], grads: Mapping[str, jax.Array]
) -> jax.Array:
    """u_n (B, P) with 1/2 ||u_n||^2 = 1/2 g_n^T F_n^+ g_n: the least-norm u_n with
    W^T u_n = g_n, datum by datum, from W's dense matrix (cost O(P^2 D^2) per datum for P
    parameters: meant for the modest D_l of multivariate locals)."""
    names = tuple(lam)

    def one(l: Mapping[str, jax.Array], g: Mapping[str, jax.Array]) -> jax.Array:
        flat = jnp.concatenate([jnp.ravel(g[k]) for k in names])
        sizes = np.cumsum([l[k].size for k in names])[:-1]

        def w(v: jax.Array) -> jax.Array:
            parts = jnp.split(v, sizes)
            return whiten(moments, l, {k: p.reshape(l[k].shape) for k, p in zip(names, parts)})

        matrix = jax.jacfwd(w)(jnp.zeros_like(flat))
        return jnp.linalg.lstsq(matrix.T, flat)[0]

    return jax.vmap(one)(dict(lam), dict(grads))


def fisher_diagonal(moments: Moments, lam: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The diagonal of F for every datum (leading axis (B,)): the squared norms of W's
    columns."""

    def one(l: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, dict(l))
        columns = jax.jacfwd(lambda t: whiten(moments, l, t))(zeros)
        return {k: jnp.sum(c**2, axis=0) for k, c in columns.items()}

    return jax.vmap(one)(dict(lam))
