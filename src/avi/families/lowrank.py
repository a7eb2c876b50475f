"""The low-rank-plus-diagonal Gaussian factor N(m, W W^T + diag(d^2)), kept as
lambda = (m, W, log d).

W is D x r: r directions of correlation at O(D r) parameters per datum instead of full rank's
D (D + 1) / 2. Every coordinate starts at sd 0.1 like the other factors, with W's column k
holding 0.05 at the coordinates i = k mod r (W = 0 would be a saddle: the ELBO's gradient in
W is 2 G W, G its gradient in the covariance).

Fisher metric: the Gaussian's, through (m, S(lambda)) (:mod:`avi.families.gaussian`); it is
singular along W -> W R for rotations R of rank >= 2, where the certificate's gain uses F^+.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from avi.errors import FamilyError
from avi.families import gaussian
from avi.families.diagonal import INIT_LOG_SCALE

INIT_FACTOR = 0.05
"""The starting entries of W (see the module docstring)."""


@dataclass(frozen=True)
class LowRank:
    """Gaussian factor whose covariance is rank ``rank`` plus a diagonal.

    Attributes:
        rank: the number of columns of W (1 <= rank; rank >= D_l - 1 covers every covariance
            of D_l coordinates up to the diagonal's positivity).
    """

    rank: int
    symmetric = True
    parameters = ("loc", "cov_factor", "log_diag")

    def __post_init__(self) -> None:
        if isinstance(self.rank, np.integer):
            object.__setattr__(self, "rank", int(self.rank))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise FamilyError(f"LowRank(rank={self.rank!r}): rank must be a positive integer.")

    def init(self, dim: int) -> dict[str, jax.Array]:
        factor = np.zeros((dim, self.rank))
        factor[np.arange(dim), np.arange(dim) % self.rank] = INIT_FACTOR
        variance = math.exp(2 * INIT_LOG_SCALE) - INIT_FACTOR**2
        return {
            "loc": jnp.zeros(dim),
            "cov_factor": jnp.asarray(factor, jnp.float32),
            "log_diag": jnp.full(dim, 0.5 * math.log(variance)),
        }

    def distribution(self, params: Mapping[str, jax.Array]) -> dist.Distribution:
        return dist.LowRankMultivariateNormal(
            params["loc"], params["cov_factor"], jnp.exp(2 * params["log_diag"])
        )

    def fisher(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return gaussian.fisher_diagonal(_moments, params)

    def natural_units(
        self, params: Mapping[str, jax.Array], grads: Mapping[str, jax.Array]
    ) -> jax.Array:
        return gaussian.natural_units(_moments, params, grads)

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
        loc, covariance = jax.vmap(_moments)(dict(params))
        return gaussian.marginal(loc, covariance, piece, arrange)


def _moments(lam: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    factor = lam["cov_factor"]
    return lam["loc"], factor @ factor.T + jnp.diag(jnp.exp(2 * lam["log_diag"]))
