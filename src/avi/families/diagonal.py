"""The diagonal Gaussian factor N(m, diag(s^2)), kept as lambda = (m, log s).

Its entropy is analytic, H = sum_d log s_d + D/2 log(2 pi e), and its Fisher information in
(m, log s) is diagonal, diag(1/s^2, 2): a coordinate's natural-gradient gain is
1/2 (s^2 g_m^2 + g_{log s}^2 / 2). The global factor q(theta) is one diagonal Gaussian too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

INIT_LOG_SCALE = math.log(0.1)
"""Every factor starts at scale 0.1 in unconstrained space, as NumPyro's AutoNormal does."""


@dataclass(frozen=True)
class Diagonal:
    """Mean-field Gaussian factor: independent coordinates (the paper's family)."""

    symmetric = True
    parameters = ("loc", "log_scale")

    def init(self, dim: int) -> dict[str, jax.Array]:
        return {"loc": jnp.zeros(dim), "log_scale": jnp.full(dim, INIT_LOG_SCALE)}

    def distribution(self, params: Mapping[str, jax.Array]) -> dist.Distribution:
        return dist.Normal(params["loc"], jnp.exp(params["log_scale"])).to_event(1)

    def fisher(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        log_scale = params["log_scale"]
        return {"loc": jnp.exp(-2 * log_scale), "log_scale": jnp.full_like(log_scale, 2.0)}

    def marginal(
        self,
        params: Mapping[str, jax.Array],
        piece: slice,
        arrange: Callable[[jax.Array], jax.Array],
    ) -> dist.Distribution:
        loc = arrange(params["loc"][..., piece])
        return dist.Normal(loc, jnp.exp(arrange(params["log_scale"][..., piece])))
