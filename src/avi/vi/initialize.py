"""Where q(theta) starts: at zero, with scales from the curvature of the log joint there.

A global whose posterior is narrow (sd sigma / sqrt(N) for a mean informed by N data) must not
start at sd 0.1 and walk there at Adam's pace of about one learning rate per step: at
N = 10^6 the linear model's q(theta) would need hundreds of steps on its scale alone, and a
relative stop rule sees none of it. Each global coordinate d starts instead at

    s_d = min(0.1, 1 / sqrt(h_d)),    h_d = -d^2/d theta_d^2 log p(x, theta, z) at theta = 0,

z at the local factors' initial means (a diagonal Laplace approximation at the starting point;
for the linear model exactly the optimal sd). Non-positive or non-finite curvature keeps 0.1.
The diagonal is exact (one Hessian-vector product per coordinate) up to 64 globals and a
Hutchinson estimate with 16 Rademacher probes beyond.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from avi.model import log_joint
from avi.vi.problem import Problem

MAX_SCALE = 0.1
"""The largest initial sd, NumPyro AutoNormal's init_scale."""

MIN_SCALE = 1e-6
"""The smallest initial sd."""

EXACT_LIMIT = 64
"""Up to this many globals the Hessian diagonal is computed exactly."""

PROBES = 16
"""Rademacher probes of the Hutchinson estimate beyond EXACT_LIMIT globals."""


def _curvature(
    key: jax.Array, problem: Problem, z: jax.Array, params: Mapping[str, Any]
) -> jax.Array:
    """-diag of the Hessian of the log joint in theta at theta = 0, shape (D_g,), at the
    model's learned parameters ``params``."""
    layout = problem.layout

    def log_p(theta: jax.Array) -> jax.Array:
        return log_joint(problem.model, layout, problem.args, problem.kwargs, theta, z, params)

    theta = jnp.zeros(layout.global_dim)

    def hvp(v: jax.Array) -> jax.Array:
        return jax.jvp(jax.grad(log_p), (theta,), (v,))[1]

    if layout.global_dim <= EXACT_LIMIT:
        basis = jnp.eye(layout.global_dim)
        return -jnp.diagonal(jax.lax.map(hvp, basis))
    probes = jax.random.rademacher(key, (PROBES, layout.global_dim), dtype=jnp.float32)
    return -jnp.mean(probes * jax.lax.map(hvp, probes), axis=0)


curvature = eqx.filter_jit(_curvature)


def initial_global_log_scale(
    key: jax.Array, problem: Problem, z: jax.Array, params: Mapping[str, Any] | None = None
) -> jax.Array:
    """log s_d of the module docstring, shape (D_g,).

    Args:
        key: PRNG key of the Hutchinson probes (used beyond EXACT_LIMIT globals).
        problem: the model and data.
        z: (N, D_l) unconstrained locals at which to take the curvature.
        params: the model's learned parameters (unconstrained leaves per site), if any.
    """
    if problem.layout.global_dim == 0:
        return jnp.zeros(0)
    h = curvature(key, problem, z, {} if params is None else dict(params))
    usable = jnp.isfinite(h) & (h > 1.0 / MAX_SCALE**2)
    scale = jnp.where(usable, 1.0 / jnp.sqrt(jnp.where(usable, h, 1.0)), MAX_SCALE)
    return jnp.log(jnp.clip(scale, MIN_SCALE, MAX_SCALE)).astype(jnp.float32)
