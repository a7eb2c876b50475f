"""Which new data an amortized fit serves poorly: the nats refinement could gain per datum.

An encoder trained on one data set gives every new datum the factor lambda_n = f_phi(x_n) in
one pass. Far from the training data (another range of the inputs, groups much larger than
any seen) that factor can be far from the datum's own optimum, and nothing in the pass says
so. The flag here measures it where it matters, in nats: near the datum's optimal factor the
ELBO, as a function of lambda_n alone (q(theta) held at the fit's), is well described by a
quadratic with the factor's Fisher information F_n as curvature (natural-gradient VI, as in
:mod:`avi.vi.certify`), so F-VI steps from the encoder's factor (:func:`avi.refine`) can gain

    Delta_n = 1/2 g_n^T F_n^{-1} g_n,    g_n = d ELBO / d lambda_n at lambda_n = f_phi(x_n)

nats on datum n. g_n is estimated with sticking-the-landing draws (Roeder et al. 2017: zero
variance at an exact fit) averaged in G independent groups, and Delta_n by the U-statistic of
cross products between different groups, 1/2 sum_{k != l} g_n^(k)T F_n^{-1} g_n^(l) /
(G (G - 1)), which is unbiased (the plug-in estimate is inflated by the noise); its standard
error is a jackknife over groups.

A datum is *flagged* when Delta_n exceeds, beyond two standard errors, the threshold
max(``floor``, the ``quantile`` of Delta over the training data): an encoder that is not ideal
leaves every training datum some nats (its amortization gap, which :func:`avi.compare`
reports), so new data are measured against what the training data are left, and the floor keeps
noise-level differences on a near-ideal encoder from being flagged. Also reported, as a cheap
pointer to the cause: how many of the datum's encoder inputs (standardised as in training) lie
outside the range the training data spanned.

Cost: G x draws_per_group gradient evaluations of the ELBO on the new data and as many on the
training data (the threshold), with no optimisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.analysis.per_datum import check_count, on_data
from avi.data.boundary import convert_arguments
from avi.data.groups import model_arguments
from avi.data.rows import per_datum_features
from avi.errors import AviError, FamilyError
from avi.families.factor import natural_units
from avi.model import trace_model
from avi.result import Fit
from avi.vi.elbo import elbo_draws
from avi.vi.problem import Problem, VariationalParams

GROUPS = 8
"""Independent groups of gradient draws (the U-statistic and its jackknife run over them)."""
FLOOR = 0.5
"""Nats below which no datum is flagged, whatever the training data are left."""
QUANTILE = 0.999
"""The training data's gains above which a new datum's counts as served worse than training."""


class Reliability(NamedTuple):
    """How well an amortized fit serves each datum of a data set.

    Attributes:
        gain: (N,) nats F-VI steps from the encoder's factor could gain per datum (Delta_n,
            unbiased; NaN for a datum the encoder cannot serve, e.g. one lacking a Window
            neighbour).
        stderr: (N,) its standard errors.
        outside: (N,) number of the datum's encoder inputs outside the training data's range.
        threshold: the nats above which a datum is flagged (module docstring).
        flagged: (N,) gain - 2 stderr > threshold.
    """

    gain: np.ndarray
    stderr: np.ndarray
    outside: np.ndarray
    threshold: float
    flagged: np.ndarray

    def __str__(self) -> str:
        count, total = int(self.flagged.sum()), self.flagged.size
        if not count:
            return (
                f"All {total} data are served as well as the training data (no datum could gain "
                f"more than {self.threshold:.3g} nats beyond noise from refinement)."
            )
        worst = int(np.nanargmax(np.where(self.flagged, self.gain, -np.inf)))
        outside = int((self.outside[self.flagged] > 0).sum())
        return (
            f"{count} of {total} data are served poorly by the encoder: refinement could gain "
            f"more than {self.threshold:.3g} nats on each (up to {self.gain[worst]:.3g} nats, "
            f"datum {worst}); {outside} of them have inputs outside the training range. "
            "Refine their factors with avi.refine(fit, *new_data), which starts F-VI from the "
            "encoder's factors and holds q(theta) at the fit's."
        )


def _group_gradients(
    key: jax.Array, params: VariationalParams, problem: Problem, per_group: int
) -> Any:
    """GROUPS independent means of ``per_group`` sticking-the-landing gradients of the ELBO
    w.r.t. the per-datum factors (leading axis GROUPS on every leaf)."""

    def one(draw_key: jax.Array) -> Any:
        def elbo(local: Any) -> jax.Array:
            return elbo_draws(draw_key, params._replace(local=local), problem, None, 1, True)[0]

        return jax.grad(elbo)(params.local)

    def group(group_key: jax.Array) -> Any:
        grads = jax.vmap(one)(jax.random.split(group_key, per_group))
        return jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)

    return jax.lax.map(group, jax.random.split(key, GROUPS))


_gradients = eqx.filter_jit(_group_gradients)


@eqx.filter_jit
def _units(factor: Any, local: Any, grads: Any) -> jax.Array:
    """Each group's gradient in the factor's Fisher units, (GROUPS, N, P): u_k . u_j =
    g^(k) F^+ g^(j) per datum (vmapped over the groups only, so a metric computed from the
    factors, such as a flow's Monte Carlo Fisher, is computed once)."""
    return jax.vmap(lambda g: natural_units(factor, local, g))(grads)


def per_datum_gain(
    fit: Fit, args: Sequence[Any], kwargs: Mapping[str, Any], draws_per_group: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Delta_n and its standard error for every datum of ``args`` (none: the training data)."""
    on = on_data(fit, args, kwargs)
    grads = _gradients(jax.random.PRNGKey(seed), on.params, on.problem, draws_per_group)
    u = np.asarray(_units(fit.family.factor, on.params.local, grads), np.float64)
    total = u.sum(0) ** 2  # (sum_k u_k)^2
    squares = (u**2).sum(0)  # sum_k u_k^2
    gain = 0.5 * _per_datum(total - squares) / (GROUPS * (GROUPS - 1))
    # jackknife: leave group j out
    leave_out = []
    for j in range(GROUPS):
        total_j = (u.sum(0) - u[j]) ** 2
        squares_j = (u**2).sum(0) - u[j] ** 2
        leave_out.append(0.5 * _per_datum(total_j - squares_j) / ((GROUPS - 1) * (GROUPS - 2)))
    leave_out = np.stack(leave_out)
    stderr = np.sqrt((GROUPS - 1) / GROUPS * np.sum((leave_out - leave_out.mean(0)) ** 2, axis=0))
    return gain, stderr


def _per_datum(values: np.ndarray) -> np.ndarray:
    """Sum over every axis but the first (the datum's)."""
    return values.reshape(values.shape[0], -1).sum(axis=1)


def _features(fit: Fit, args: Sequence[Any], kwargs: Mapping[str, Any]) -> np.ndarray:
    """The encoder's standardised inputs for data ``args`` (none: the training data); for
    grouped data each group's mean row and log(1 + n_j), what a set encoder pools."""
    if not args and not kwargs:
        args, kwargs, traced = fit.args, fit.kwargs, fit.traced
    else:
        args, kwargs = convert_arguments(args, kwargs)
        args, kwargs = model_arguments(fit.traced.model, args, kwargs)
        traced = trace_model(fit.traced.model, args, kwargs, plate=fit.traced.layout.plate)
    features = np.asarray(fit.scaling.apply(per_datum_features(traced, args, kwargs)))
    if features.ndim == 3:  # a group's rows (channel 0 the mask): their mean and log(1 + n)
        mask = features[..., 0]
        count = mask.sum(axis=1)
        mean = np.einsum("js,jsf->jf", mask, features[..., 1:]) / np.maximum(count, 1)[:, None]
        return np.concatenate([mean, np.log1p(count)[:, None]], axis=1)
    return features


def reliability(
    fit: Fit,
    *args: Any,
    draws_per_group: int = 8,
    floor: float = FLOOR,
    quantile: float = QUANTILE,
    seed: int = 0,
    **kwargs: Any,
) -> Reliability:
    """Flag the new data an amortized fit serves poorly (module docstring).

    Args:
        fit: an amortized (or constant) fit, in memory (the threshold uses its training data).
        *args: the new data, as the model's positional arguments.
        draws_per_group: gradient draws in each of the GROUPS groups.
        floor: nats below which no datum is flagged.
        quantile: the training data's quantile of Delta that a new datum must exceed.
        seed: seed of the draws.
        **kwargs: the model's keyword arguments for the new data.

    Returns:
        The :class:`Reliability` of the new data.

    Raises:
        FamilyError: a Factorized fit (it has no encoder; refit the new data with avi.fit), or
            a fit without its training data (loaded or streamed).
        AviError: no new data, or bad ``draws_per_group``, ``floor`` or ``quantile``.
    """
    if not fit.family.infers_new_data:
        raise FamilyError(
            "reliability(fit, new data) measures an encoder's factors; this fit is Factorized "
            "(free factors per training datum) and infers no new data."
        )
    if not args and not kwargs:
        raise AviError("reliability(fit, *new_data): pass the new data to assess.")
    check_count("draws_per_group", draws_per_group, 1)
    if not isinstance(floor, (int, float)) or isinstance(floor, bool) or not floor >= 0:
        raise AviError(f"floor={floor!r}: give a number of nats >= 0.")
    if not isinstance(quantile, float) or not 0 < quantile <= 1:
        raise AviError(f"quantile={quantile!r}: give a probability in (0, 1].")
    fit._check_in_memory("the training data (which set the threshold)")
    training, _ = per_datum_gain(fit, (), {}, draws_per_group, seed)
    if np.all(np.isnan(training)):
        raise FamilyError(
            f"reliability(fit, new data) measures gains in the factor's Fisher metric, which "
            f"{fit.family.factor!r} does not have; compare the fit's ELBO on the new data with "
            "avi.refine(fit, *new_data)'s instead."
        )
    threshold = max(float(floor), float(np.nanquantile(training, quantile)))
    gain, stderr = per_datum_gain(fit, args, kwargs, draws_per_group, seed + 1)
    seen = _features(fit, (), {})
    new = _features(fit, args, kwargs)
    outside = ((new < seen.min(axis=0)) | (new > seen.max(axis=0))).sum(axis=1)
    with np.errstate(invalid="ignore"):
        flagged = gain - 2 * stderr > threshold
    return Reliability(gain, stderr, outside, threshold, flagged)
