"""The curvature of the model's learned parameters for the convergence certificate.

A learned parameter u (unconstrained; :mod:`avi.model.params`) is a point: q has no Fisher
information in it, so the metric of its block is the model's own, estimated as the *empirical
Fisher* under q. With the log joint split into the terms of the sites outside the data plate,
g(theta; u), and the datum terms l_n(theta, z_n; u),

    F = E_q[ s_0 s_0^T + sum_n s_n s_n^T ],   s_0 = d g / d u,   s_n = d l_n / d u,

the sum of the outer products of each unit's score (Fisher's information of independent
observations, with the globals' own terms as one more unit; for a well-specified model it
approximates the Hessian of -ELBO in u). The gain still available from the block is then
1/2 g^T F^+ g, g the ELBO's gradient in u, estimated without bias by the certificate's
U-statistic over groups of draws (:mod:`avi.vi.certify`), as for the encoder's Gauss-Newton
block. F is damped like the encoder's curvature (by 1e-3 of its mean eigenvalue).

Cost: the scores are one gradient per datum and draw; at most :data:`SCORE_BUDGET` floats of
them are formed, over a uniform subset of M data whose outer products are scaled by N / M
(unbiased for the sum over all data). F^+ g is solved in the smaller of the parameter space
and the rows' space (Woodbury): (A^T A + d I)^-1 g = (g - A^T (A A^T + d I)^-1 A g) / d.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy.linalg import cho_factor, cho_solve

from avi.data.rows import slice_arguments
from avi.families.protocol import factors_given, given_globals
from avi.model import log_joint_by_plate
from avi.vi.elbo import global_distribution
from avi.vi.problem import Problem, VariationalParams

SCORE_BUDGET = 2**24
"""Floats of per-datum scores formed for the curvature (64 MiB in float32)."""

MAX_DRAWS = 4
"""Draws of q over which the empirical Fisher is averaged, budget permitting."""

DAMPING = 1e-3
"""Damping relative to F's mean eigenvalue (as the encoder's Gauss-Newton block)."""


def score_rows(num_data: int, size: int) -> tuple[int, int]:
    """(draws S, data M) of the scores: S M + S rows of ``size`` floats within the budget."""
    rows = max(64, SCORE_BUDGET // max(1, size))
    draws = int(np.clip(rows // (num_data + 1), 1, MAX_DRAWS))
    return draws, int(min(num_data, max(1, rows // draws - 1)))


def _scores(
    key: jax.Array, params: VariationalParams, problem: Problem, num_draws: int, num_rows: int
) -> jax.Array:
    """Rows of A, A^T A = F (module docstring): for each of ``num_draws`` draws of q the score
    of the outside terms and sqrt(N / M) times the scores of M of the problem's data drawn
    uniformly without replacement (streamed: of its rows, themselves a uniform subset), each
    divided by sqrt(S); shape (S (M + 1), P)."""
    layout = problem.layout
    flat, unravel = ravel_pytree(params.model)
    subset_key, draw_key = jax.random.split(key)
    available = problem.local_data.features.shape[0]
    index = jax.random.choice(subset_key, available, (min(num_rows, available),), replace=False)
    num_rows = index.shape[0]
    weight = jnp.sqrt(layout.num_data / num_rows)

    def one_draw(key: jax.Array) -> jax.Array:
        global_key, local_key = jax.random.split(key)
        theta = global_distribution(params).sample(global_key)
        lam = factors_given(problem.family, params.local, problem.local_data, index, theta[None])
        if given_globals(problem.family):
            lam = {k: v[0] for k, v in lam.items()}
        z = problem.family.factor.distribution(lam).sample(local_key)

        def terms(vector: jax.Array, row: jax.Array, z_row: jax.Array) -> tuple[jax.Array, ...]:
            args, kwargs = slice_arguments(layout, problem.args, problem.kwargs, row[None])
            return log_joint_by_plate(
                problem.model, layout, args, kwargs, theta, z_row[None], unravel(vector)
            )

        outside = jax.grad(lambda v: terms(v, index[0], z[0])[0])(flat)
        inside = jax.vmap(lambda r, zr: jax.grad(lambda v: terms(v, r, zr)[1])(flat))(index, z)
        # the in-plate term of a one-datum batch is N l_n
        return jnp.concatenate([outside[None], weight * inside / layout.num_data])

    rows = jax.lax.map(one_draw, jax.random.split(draw_key, num_draws))
    return rows.reshape(-1, flat.size) / jnp.sqrt(num_draws)


scores = eqx.filter_jit(_scores)


def empirical_fisher_solver(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """r -> (F + d I)^+ r for each row r of its argument, F = A^T A from the score rows A,
    d = DAMPING times F's mean eigenvalue, factorised once; NaN where the scores are not
    finite (the gain is then unknown, never zero)."""
    if not np.all(np.isfinite(rows)):
        return lambda rhs: np.full(rhs.shape, np.nan)
    size = rows.shape[1]
    damping = DAMPING * float(np.sum(rows * rows)) / size
    if damping == 0.0:  # no score moves: nothing reads the parameters
        return np.zeros_like
    if size <= rows.shape[0]:
        factor = cho_factor(rows.T @ rows + damping * np.eye(size))
        return lambda rhs: cho_solve(factor, rhs.T).T
    factor = cho_factor(rows @ rows.T + damping * np.eye(rows.shape[0]))
    return lambda rhs: (rhs - (rows.T @ cho_solve(factor, rows @ rhs.T)).T) / damping
