"""The factor protocol: a reparameterizable distribution over one datum's local coordinates.

Every family gives datum n a factor q(z_n | lambda_n) over its D_l unconstrained local
coordinates; a family only decides where lambda_n comes from (a free table, one shared value,
an encoder f_phi(x_n)). The factor decides what lambda means. The ELBO, the convergence
certificate, the diagnostics and :meth:`avi.Fit.posterior` are written once against this
protocol, so a new factor (full-rank, a flow, a Student-t) is one new class, with no edits
elsewhere.

With draws z = T_lambda(eps) (reparameterization) the local part of the ELBO is

    E_q[log p(x_n, z_n | theta)] + H[q(z_n | lambda_n)],

with the entropy H taken from the distribution when it is analytic and as -log q(z) of the
draws otherwise.

The convergence certificate measures gradients in the factor's Fisher metric
(:func:`natural_units`, :func:`fisher_product`). A factor whose Fisher is not diagonal in its
parameters (a full-rank Gaussian, a flow's Monte Carlo estimate) gives them with optional
methods ``natural_units`` and ``fisher_product``; otherwise its diagonal ``fisher`` is the
metric. A factor without a known Fisher returns NaN from ``fisher``: the certificate then
reports the gain as unknown and never certifies the block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpyro.distributions as dist


@runtime_checkable
class Factor(Protocol):
    """What a local factor provides.

    Attributes:
        parameters: the names of lambda's parts, in the order an encoder outputs them; the
            first is the location-like part (an encoder's main head).

    Optional: ``symmetric = True`` where q(z | lambda) is symmetric about its mean (the
    Gaussians): the convergence certificate then draws antithetic pairs
    (:func:`avi.vi.elbo.reflected`); other factors' draws stay independent.
    """

    parameters: tuple[str, ...]

    def init(self, dim: int) -> dict[str, jax.Array]:
        """lambda of the starting factor of one datum with ``dim`` coordinates (every family
        starts every datum there)."""
        ...

    def distribution(self, params: Mapping[str, jax.Array]) -> dist.Distribution:
        """q(z | lambda) for parameters with leading batch axes (B,): batch shape (B,), event
        shape (dim,); must support ``rsample`` (reparameterized draws)."""
        ...

    def fisher(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The diagonal of the Fisher information of each part of lambda (same shapes): the
        metric of natural-gradient steps and of the convergence certificate's gain
        1/2 g^T F^-1 g (:mod:`avi.vi.certify`)."""
        ...

    def marginal(
        self,
        params: Mapping[str, jax.Array],
        piece: slice,
        arrange: Callable[[jax.Array], jax.Array],
    ) -> dist.Distribution:
        """The marginal of the coordinates ``piece`` of every datum (parameters with leading
        axis (B,)), its values laid out by ``arrange`` (which maps a (B, piece size) array to
        the site's shape in the model); for :meth:`avi.Fit.posterior`."""
        ...


def natural_units(
    factor: Factor, params: Mapping[str, jax.Array], grads: Mapping[str, jax.Array]
) -> jax.Array:
    """A gradient g of the parameters of B factors (leading axis (B,)) as rows u_n (B, P) with
    1/2 ||u_n||^2 = 1/2 g_n^T F_n^+ g_n, the gain of a natural-gradient step on datum n's
    factor: the factor's own ``natural_units`` where it has one, else g / sqrt(diag F)."""
    if hasattr(factor, "natural_units"):
        return factor.natural_units(params, grads)
    fisher = factor.fisher(params)
    units = [grads[k] * jax.lax.rsqrt(fisher[k]) for k in grads]
    return jnp.concatenate([u.reshape(u.shape[0], -1) for u in units], axis=1)


def fisher_product(
    factor: Factor, params: Mapping[str, jax.Array], tangent: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """F t for a tangent t of the parameters of B factors: the factor's own ``fisher_product``
    where it has one, else diag(F) t."""
    if hasattr(factor, "fisher_product"):
        return factor.fisher_product(params, tangent)
    fisher = factor.fisher(params)
    return {k: fisher[k] * tangent[k] for k in tangent}


def split_outputs(factor: Factor, outputs: tuple[jax.Array, ...]) -> dict[str, jax.Array]:
    """An encoder's outputs, in ``factor.parameters`` order, as lambda."""
    return dict(zip(factor.parameters, outputs, strict=True))
