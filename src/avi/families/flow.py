"""A normalizing-flow factor: q(z | lambda) the law of z = m + L s(eps), eps ~ N(0, I_D).

s acts coordinate by coordinate with a monotone rational-quadratic spline (Durkan et al. 2019)
from FlowJAX on [-B, B] (the identity outside), and L is lower triangular with a positive
diagonal (packed like :class:`avi.FullRank`'s). lambda = (m, packed L, spline parameters):
the spline's unconstrained knot positions and derivatives, K + 1, K + 1 and K + 2 numbers per
coordinate for K knots. Conditioned through a family, lambda_n = f_phi(x_n): the encoder is the
flow's conditioner, and F-VI gives each datum free flow parameters. In one dimension a
monotone map of N(0, 1) reaches any continuous law, so the factor is limited only by K; in
several, the spline shapes each coordinate and L correlates them.

Why FlowJAX: an equinox library (the encoders here are equinox Modules) maintained on PyPI with
a stable bijection interface (``transform_and_log_det``, ``inverse_and_log_det``), whose spline
has a closed-form inverse, so log q(z) is exact for any z; its parameters are plain array
leaves (wrapped by paramax), which the flow fills from lambda per datum.

Density. With y = L^-1 (z - m) and eps = s^-1(y),
log q(z) = log N(eps; 0, I) - sum_d log s_d'(eps_d) - sum_d log L_dd. The entropy has no closed
form: the ELBO uses -log q of the draws. The spline starts at the identity, so every factor
starts as :class:`avi.FullRank`'s, N(0, 0.1^2 I).

Fisher information: no closed form, so it is estimated per datum from its definition,

    F_n = E_q[s s^T],    s = grad_lambda log q(z | lambda_n) at z ~ q(. | lambda_n),

with :data:`FISHER_DRAWS` per parameter (at least 128) draws under a fixed key (the same matrix
every time it is asked for, so a conjugate-gradient solve or a dense curvature sees one
operator), and damped like the certificate's shared block: F_n + DAMPING tr(F_n) / P I. The
damping fills the directions that move no density (a spline's redundant logits) and keeps the
inverse of the estimate from amplifying its noise; since E[F_hat^-1] >= F^-1, the noise left
makes the gains 1/2 g^T F_hat^-1 g of the certificate and of :func:`avi.reliability` larger,
never smaller. ``natural_units`` (Cholesky of the damped F_n) and ``fisher_product`` serve
them; ``fisher`` gives its diagonal. At the identity spline the (loc, tril) block equals
:class:`avi.FullRank`'s exact Fisher (log q is then that Gaussian's), which the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from avi.errors import FamilyError
from avi.families.fullrank import FullRank, cholesky

if TYPE_CHECKING:
    from flowjax.bijections import RationalQuadraticSpline

QUADRATURE_NODES = 64
"""Gauss-Hermite nodes of the mean E[s(eps)], one-dimensional per coordinate."""

FISHER_DRAWS = 8
"""Draws per factor parameter (at least 128 in all) of the Monte Carlo Fisher information."""

FISHER_DAMPING = 1e-3
"""Damping of the Monte Carlo Fisher, relative to its mean eigenvalue (as the certificate's
shared block, :data:`avi.vi.certify.DAMPING`)."""


@dataclass(frozen=True)
class Flow:
    """Spline flow factor: z = m + L s(eps), s a monotone spline per coordinate.

    Attributes:
        knots: the spline's inner knots K per coordinate.
        interval: the spline acts on [-interval, interval] of the standard normal eps.
    """

    knots: int = 8
    interval: float = 4.0
    parameters = ("loc", "tril", "spline")

    def __post_init__(self) -> None:
        if isinstance(self.knots, np.integer):
            object.__setattr__(self, "knots", int(self.knots))
        if not isinstance(self.knots, int) or isinstance(self.knots, bool) or self.knots < 1:
            raise FamilyError(f"Flow(knots={self.knots!r}): knots must be a positive integer.")
        if not (isinstance(self.interval, (int, float)) and self.interval > 0):
            raise FamilyError(f"Flow(interval={self.interval!r}): give a positive number.")
        object.__setattr__(self, "interval", float(self.interval))

    def spline(self) -> RationalQuadraticSpline:
        """The spline of one coordinate at its start (the identity)."""
        from flowjax.bijections import RationalQuadraticSpline  # loaded when a flow is used

        return RationalQuadraticSpline(knots=self.knots, interval=self.interval)

    def init(self, dim: int) -> dict[str, jax.Array]:
        start = _spline_vector(self.spline())
        return {**FullRank().init(dim), "spline": jnp.tile(start, (dim, 1))}

    def distribution(self, params: Mapping[str, jax.Array]) -> dist.Distribution:
        return SplineFlow(self, params["loc"], cholesky(params["tril"]), params["spline"])

    def fisher(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The diagonal of the damped Monte Carlo Fisher (module docstring)."""
        diagonal = jnp.diagonal(self._fisher_matrix(params), axis1=-2, axis2=-1)
        return _unflatten(diagonal, params, self.parameters)

    def natural_units(
        self, params: Mapping[str, jax.Array], grads: Mapping[str, jax.Array]
    ) -> jax.Array:
        """Rows u_n = C_n^-1 g_n with C_n C_n^T the damped Monte Carlo Fisher of datum n, so
        1/2 ||u_n||^2 = 1/2 g_n^T F_n^-1 g_n."""
        chol = jnp.linalg.cholesky(self._fisher_matrix(params))
        g = _flatten(grads, self.parameters)
        return jax.scipy.linalg.solve_triangular(chol, g[..., None], lower=True)[..., 0]

    def fisher_product(
        self, params: Mapping[str, jax.Array], tangent: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """F_n t_n for every datum (the damped Monte Carlo Fisher)."""
        product = jnp.einsum(
            "...ij,...j->...i", self._fisher_matrix(params), _flatten(tangent, self.parameters)
        )
        return _unflatten(product, tangent, self.parameters)

    def _fisher_matrix(self, params: Mapping[str, jax.Array]) -> jax.Array:
        """(B, P, P): per datum the damped mean of score outer products (module docstring)."""
        params = {k: params[k] for k in self.parameters}
        size = _flatten(params, self.parameters).shape[-1]
        draws = max(128, FISHER_DRAWS * size)
        q = self.distribution(params)
        z = jax.lax.stop_gradient(q.sample(jax.random.PRNGKey(0), (draws,)))

        def log_q(lam: dict[str, jax.Array], value: jax.Array) -> jax.Array:
            # datum n's log density depends on lambda_n alone: the gradient of the sum over
            # data is every datum's own score
            return jnp.sum(self.distribution(lam).log_prob(value))

        scores = jax.vmap(jax.grad(log_q), (None, 0))(params, z)
        flat = _flatten(scores, self.parameters)  # (draws, B, P)
        fisher = jnp.einsum("sbi,sbj->bij", flat, flat) / draws
        trace = jnp.trace(fisher, axis1=-2, axis2=-1)[..., None, None]
        return fisher + FISHER_DAMPING * trace / size * jnp.eye(size)

    def marginal(
        self,
        params: Mapping[str, jax.Array],
        piece: slice,
        arrange: Callable[[jax.Array], jax.Array],
    ) -> dist.Distribution:
        """The flow of the coordinates ``piece``. Leading coordinates (the first local site)
        are a flow of their own (L is triangular) with an exact density; later ones can be
        drawn but their density is an integral (``log_prob`` raises). A scalar site gets event
        shape (), a vector site on the plate's first axis (k,)."""
        chol = cholesky(params["tril"])
        rows = chol[..., piece, :]
        size = rows.shape[-2]
        probe = np.arange(rows.shape[0] * size).reshape(rows.shape[0], size)
        arranged = np.asarray(arrange(jnp.asarray(probe)))
        if not (
            np.array_equal(arranged, probe) or (size == 1 and arranged.shape == probe[:, 0].shape)
        ):
            raise FamilyError(
                "A Flow factor's posterior() serves scalar or vector local sites on the data "
                "plate's first axis; draw other sites with fit.sample."
            )
        return SplineFlow(
            self, params["loc"][..., piece], rows, params["spline"], scalar=arranged.ndim == 1
        )


def _flatten(tree: Mapping[str, jax.Array], names: tuple[str, ...]) -> jax.Array:
    """The parts ``names`` of per-datum parameters (leading axes shared by all parts: data,
    or draws and data for scores) as one vector per datum; parts are (..., D) (loc),
    (..., D(D+1)/2) (tril) and (..., D, P) (spline)."""
    leading = tree["loc"].ndim - 1
    return jnp.concatenate(
        [tree[k].reshape(*tree[k].shape[:leading], -1) for k in names], axis=-1
    )


def _unflatten(
    vector: jax.Array, like: Mapping[str, jax.Array], names: tuple[str, ...]
) -> dict[str, jax.Array]:
    """Inverse of :func:`_flatten`, shaped like ``like``."""
    leading = like["loc"].ndim - 1
    sizes = [int(np.prod(like[k].shape[leading:])) for k in names]
    parts = jnp.split(vector, np.cumsum(sizes)[:-1], axis=-1)
    return {k: p.reshape(like[k].shape) for k, p in zip(names, parts, strict=True)}


def _spline_vector(spline: RationalQuadraticSpline) -> jax.Array:
    arrays = jax.tree_util.tree_leaves(eqx.filter(spline, eqx.is_inexact_array))
    return jnp.concatenate([jnp.ravel(a) for a in arrays])


def _spline_at(template: RationalQuadraticSpline, vector: jax.Array) -> RationalQuadraticSpline:
    """The template's spline with its unconstrained arrays taken from ``vector``, unwrapped."""
    import paramax  # loaded with flowjax, when a flow is used

    arrays, static = eqx.partition(template, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(arrays)
    cuts = np.cumsum([leaf.size for leaf in leaves])[:-1]
    parts = [p.reshape(leaf.shape) for p, leaf in zip(jnp.split(vector, cuts), leaves, strict=True)]
    return paramax.unwrap(eqx.combine(jax.tree_util.tree_unflatten(tree, parts), static))


class SplineFlow(dist.Distribution):
    """z = m + R s(eps) for B data: m (B, k), rows R (B, k, D) of L (the first k rows give a
    square triangular R with an exact density), spline parameters (B, D, P); eps ~ N(0, I_D).

    Batch shape (B,), event shape (k,) (() with ``scalar``)."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    reparametrized_params: ClassVar[list[str]] = ["loc", "rows", "spline"]
    pytree_data_fields = ("loc", "rows", "spline")
    pytree_aux_fields = ("flow", "scalar")

    def __init__(
        self,
        flow: Flow,
        loc: jax.Array,
        rows: jax.Array,
        spline: jax.Array,
        scalar: bool = False,
    ):
        self.flow, self.loc, self.rows, self.spline, self.scalar = flow, loc, rows, spline, scalar
        event = () if scalar else loc.shape[-1:]
        super().__init__(batch_shape=loc.shape[:-1], event_shape=event)

    def _splines(self, eps: jax.Array, inverse: bool) -> tuple[jax.Array, jax.Array]:
        """s(eps) (or s^-1) coordinatewise and log|ds/deps| per coordinate, for eps of shape
        (..., *batch, D)."""
        template = self.flow.spline()

        def one(vector: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
            spline = _spline_at(template, vector)
            if inverse:
                x, log_det = spline.inverse_and_log_det(value)
                return x, -log_det
            return spline.transform_and_log_det(value)

        vectors = self.spline.reshape(-1, self.spline.shape[-1])
        flat = eps.reshape(-1, vectors.shape[0])
        out, log_det = jax.vmap(lambda e: jax.vmap(one)(vectors, e))(flat)
        return out.reshape(eps.shape), log_det.reshape(eps.shape)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.real if self.scalar else constraints.real_vector

    def _event(self, z: jax.Array) -> jax.Array:
        return z[..., 0] if self.scalar else z

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        eps = jax.random.normal(key, sample_shape + self.spline.shape[:-1])
        y, _ = self._splines(eps, inverse=False)
        return self._event(self.loc + jnp.einsum("...kd,...d->...k", self.rows, y))

    def rsample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        return self.sample(key, sample_shape)

    @property
    def has_rsample(self) -> bool:
        return True

    def log_prob(self, value: jax.Array) -> jax.Array:
        if self.rows.shape[-2] != self.rows.shape[-1]:
            raise NotImplementedError(
                "The density of a Flow factor's later coordinates alone is an integral over the "
                "earlier ones; only the first local site's marginal has log_prob."
            )
        z = value[..., None] if self.scalar else value
        centred = jnp.broadcast_to(z - self.loc, jnp.broadcast_shapes(z.shape, self.loc.shape))
        chol = jnp.broadcast_to(self.rows, (*centred.shape, centred.shape[-1]))
        y = jax.scipy.linalg.solve_triangular(chol, centred[..., None], lower=True)[..., 0]
        eps, log_det = self._splines(y, inverse=True)
        log_diagonal = jnp.sum(jnp.log(jnp.diagonal(self.rows, axis1=-2, axis2=-1)), axis=-1)
        base = jnp.sum(jax.scipy.stats.norm.logpdf(eps) - log_det, axis=-1)
        return base - log_diagonal

    @property
    def mean(self) -> jax.Array:
        """m + R E[s(eps)], each E[s_d(eps_d)] by Gauss-Hermite quadrature."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
        grid = jnp.broadcast_to(
            jnp.asarray(nodes, jnp.float32)[:, None, None],
            (QUADRATURE_NODES, *self.spline.shape[:-1]),
        )
        y, _ = self._splines(grid, inverse=False)
        expected = jnp.tensordot(jnp.asarray(weights / weights.sum(), jnp.float32), y, axes=1)
        return self._event(self.loc + jnp.einsum("...kd,...d->...k", self.rows, expected))
