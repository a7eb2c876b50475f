"""The full-rank Gaussian factor N(m, L L^T), kept as lambda = (m, packed L).

``tril`` holds the D (D + 1) / 2 entries of the lower-triangular Cholesky factor L row by row
(``jnp.tril_indices``), with each diagonal entry as its logarithm, so every real vector is a
valid factor. An encoder outputs (m, tril): a Polynomial encoder gives a mean linear in the
datum and one L shared by every datum, the exact posterior of a linear Gaussian model.

Fisher metric. With M = L^-1 dL (lower triangular), the Gaussian's Fisher information is

    F(dm, dL) = dm^T S^-1 dm + 1/2 ||M + M^T||_F^2
              = dm^T S^-1 dm + 2 sum_i M_ii^2 + sum_{i>j} M_ij^2,

diagonal in (L^-1 dm, M). A gradient (g_m, g_L) is g_M = tril(L^T g_L) in M's coordinates,
so the natural-gradient gain 1/2 g^T F^-1 g is 1/2 ||u||^2 with

    u = (L^T g_m, diag(g_M) / sqrt 2, g_M below the diagonal),

O(D^3) per datum. Its diagonal (the protocol's ``fisher``): diag(S^-1) for m, and with
c_i = ||column i of L^-1||^2, c_i for L_ij below the diagonal and 1 + L_ii^2 c_i for log L_ii.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from avi.families import gaussian
from avi.families.diagonal import INIT_LOG_SCALE


def packed_size(dim: int) -> int:
    """Entries of a packed D x D lower triangle, D (D + 1) / 2."""
    return dim * (dim + 1) // 2


def dimension(size: int) -> int:
    """D of a packed lower triangle of ``size`` entries."""
    dim = (math.isqrt(8 * size + 1) - 1) // 2
    assert packed_size(dim) == size, size
    return dim


def cholesky(tril: jax.Array) -> jax.Array:
    """L (..., D, D) from packed entries (..., D (D + 1) / 2) with log diagonal."""
    dim = dimension(tril.shape[-1])
    rows, cols = np.tril_indices(dim)
    values = jnp.where(jnp.asarray(rows == cols), jnp.exp(tril), tril)
    return jnp.zeros((*tril.shape[:-1], dim, dim), tril.dtype).at[..., rows, cols].set(values)


@dataclass(frozen=True)
class FullRank:
    """Gaussian factor with a full covariance: any correlation between a datum's coordinates."""

    symmetric = True
    parameters = ("loc", "tril")

    def init(self, dim: int) -> dict[str, jax.Array]:
        rows, cols = np.tril_indices(dim)
        return {
            "loc": jnp.zeros(dim),
            "tril": jnp.where(jnp.asarray(rows == cols), INIT_LOG_SCALE, 0.0),
        }

    def distribution(self, params: Mapping[str, jax.Array]) -> dist.Distribution:
        return dist.MultivariateNormal(params["loc"], scale_tril=cholesky(params["tril"]))

    def fisher(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        chol = cholesky(params["tril"])
        dim = chol.shape[-1]
        identity = jnp.broadcast_to(jnp.eye(dim), chol.shape)
        inverse = jax.scipy.linalg.solve_triangular(chol, identity, lower=True)
        columns = jnp.sum(inverse**2, axis=-2)  # c_i = ||L^-1 e_i||^2 = (S^-1)_ii
        rows, cols = np.tril_indices(dim)
        diagonal = jnp.diagonal(chol, axis1=-2, axis2=-1)
        on_diagonal = 1 + diagonal[..., rows] ** 2 * columns[..., rows]
        return {
            "loc": columns,
            "tril": jnp.where(jnp.asarray(rows == cols), on_diagonal, columns[..., rows]),
        }

    def natural_units(
        self, params: Mapping[str, jax.Array], grads: Mapping[str, jax.Array]
    ) -> jax.Array:
        chol = cholesky(params["tril"])
        dim = chol.shape[-1]
        rows, cols = np.tril_indices(dim)
        diagonal = jnp.diagonal(chol, axis1=-2, axis2=-1)
        # d/dL_ii = d/dlog L_ii / L_ii
        g = jnp.where(jnp.asarray(rows == cols), grads["tril"] / diagonal[..., rows], grads["tril"])
        g_chol = jnp.zeros_like(chol).at[..., rows, cols].set(g)
        g_m = jnp.tril(jnp.einsum("...ji,...jk->...ik", chol, g_chol))
        below = rows > cols
        units = (
            jnp.einsum("...ji,...j->...i", chol, grads["loc"]),
            jnp.diagonal(g_m, axis1=-2, axis2=-1) / jnp.sqrt(2.0),
            g_m[..., rows[below], cols[below]],
        )
        return jnp.concatenate([u.reshape(u.shape[0], -1) for u in units], axis=1)

    def fisher_product(
        self, params: Mapping[str, jax.Array], tangent: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        return gaussian.fisher_product(_moments, params, tangent)

    def marginal(
        self,
        params: Mapping[str, jax.Array],
        piece: slice,
        arrange: Callable[[jax.Array], jax.Array],
    ) -> dist.Distribution:
        chol = cholesky(params["tril"])
        return gaussian.marginal(params["loc"], chol @ jnp.swapaxes(chol, -1, -2), piece, arrange)


def _moments(lam: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    chol = cholesky(lam["tril"])
    return lam["loc"], chol @ chol.T
