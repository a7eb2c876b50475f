"""Per-datum ELBO contributions of a fit, on its training data or on new data.

Notation (paper, section 2): q(theta, z) = q(theta) prod_n q(z_n), Gaussian in unconstrained
space; an amortized fit gives q(z_n) = N(f_phi(x_n)). Every function here works through the
per-datum factor parameters lambda_n (nu_n = (mu_n, log sigma_n) for the diagonal Gaussian)
that a fit assigns to the data
(:meth:`avi.Fit.local_factors`), so it applies to any family that can infer them (amortized or
constant) and, on the training data, to F-VI too.

The ELBO splits into a global part and one contribution per datum,

    ELBO = E_q[g(theta)] + H[q(theta)] + sum_n l_n,
    l_n  = E_q[log p_n(x_n, z_n | theta, ...)] + H[q(z_n)],

where g collects the log densities (and log-Jacobians) of the sites outside the data plate
(the prior of theta), and log p_n collects the slice n of every site inside the data plate:
the prior of z_n and the likelihood of x_n, with whatever else they depend on (x_{n-1} in the
saw model, Eq. 11), plus the log-Jacobian of z_n. :func:`per_datum_elbo_draws` estimates l_n
with reparameterized draws (key-for-key the draws of :func:`avi.vi.elbo.elbo_draws`), so two fits
of the same model evaluated with the same seed share their random numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.data.boundary import convert_arguments
from avi.data.groups import model_arguments
from avi.errors import AviError
from avi.families import Factorized
from avi.model import ModelLayout, constrained_trace, trace_model
from avi.model.params import initial_model_params
from avi.result import Fit
from avi.vi.elbo import entropy, global_distribution
from avi.vi.problem import Problem, VariationalParams

DRAW_BUDGET = 2e7
"""Floats of latent draws held at once; larger requests are computed in groups of draws."""


class OnData(NamedTuple):
    """The model on one data set with the fit's factors there, as a Factorized problem.

    Attributes:
        problem: model, layout and data, with the Factorized family of the fit's factor (free
            factors per datum).
        params: q(theta) of the fit and, as free tables, the factors it assigns to the data.
    """

    problem: Problem
    params: VariationalParams


def _device(value: Any) -> Any:
    return jnp.asarray(value) if isinstance(value, np.ndarray) else value


def _factorized_problem(
    family: Factorized,
    model: Any,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    model_init: dict[str, tuple[jax.Array, ...]],
) -> Problem:
    return Problem(
        model=model,
        layout=layout,
        family=family,
        args=tuple(_device(a) for a in args),
        kwargs={k: _device(v) for k, v in kwargs.items()},
        local_data=family.prepare(np.zeros((layout.num_data, 0), np.float32)),
        model_init=model_init,
    )


def on_data(fit: Fit, args: Sequence[Any], kwargs: Mapping[str, Any]) -> OnData:
    """The fit's factors on its training data (no arguments) or on new data.

    Raises:
        FamilyError: new data for a Factorized fit, or data it cannot infer (see
            :meth:`avi.Fit.local_factors`).
    """
    parts = fit.local_factors(*args, **kwargs)
    factors = dict(zip(fit.family.factor.parameters, parts, strict=True))
    family = Factorized(fit.family.factor)
    if args or kwargs:
        args, kwargs = convert_arguments(args, kwargs)
        args, kwargs = model_arguments(fit.traced.model, args, kwargs)
        traced = trace_model(fit.traced.model, args, kwargs, plate=fit.traced.layout.plate)
        problem = _factorized_problem(
            family, traced.model, traced.layout, args, kwargs,
            initial_model_params(traced.layout.params, traced.trace),
        )
    else:
        base = fit.problem
        problem = _factorized_problem(
            family, base.model, base.layout, base.args, base.kwargs, base.model_init
        )
    # the learned model parameters are the fit's (held fixed on new data by avi.refine)
    params = VariationalParams(
        fit.params.global_loc, fit.params.global_log_scale, factors, dict(fit.params.model)
    )
    return OnData(problem, params)


def draw_groups(
    seed: int, num_particles: int, layout: ModelLayout, cost: int = 1
) -> list[tuple[jax.Array, int]]:
    """(key, number of draws) of each group of draws.

    Groups hold at most DRAW_BUDGET / cost floats of local draws; the split depends on the
    layout only, so every fit of a model gets the same draws for the same seed.
    """
    floats_per_draw = cost * max(1, layout.num_data * max(1, layout.local_dim))
    group = max(1, min(num_particles, int(DRAW_BUDGET // floats_per_draw)))
    sizes = [group] * (num_particles // group) + (
        [num_particles % group] if num_particles % group else []
    )
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes))
    return [(key, size) for key, size in zip(keys, sizes, strict=True)]


def check_count(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise AviError(f"{name}={value!r}: give an integer >= {minimum}.")


# ------------------------------------------------------------------- per-datum contributions


def per_datum_log_joint(
    model: Any,
    layout: ModelLayout,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    theta: jax.Array,
    z: jax.Array,
    params: Mapping[str, tuple[jax.Array, ...]] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """log p(x, T(theta), T(z)) + log|det J| split into a global term and one term per datum.

    A sample site inside the data plate contributes its log density's slice n (summed over its
    other axes) to datum n; a site outside contributes to the global term. The log-Jacobian of
    each constrained latent goes with its site. The global term plus the sum of the per-datum
    terms is :func:`avi.model.log_joint` on the full data.

    Args:
        model: the NumPyro model.
        layout: its layout from :func:`avi.model.trace_model`.
        args: the model's positional arguments (full data).
        kwargs: its keyword arguments.
        theta: flat unconstrained globals, (D_g,).
        z: flat unconstrained locals, (N, D_l).
        params: the model's learned parameters (unconstrained leaves per site), if any.

    Returns:
        (scalar global term, (N,) per-datum terms).
    """
    trace, log_dets = constrained_trace(model, layout, args, kwargs, theta, z, params)
    global_term = jnp.zeros(())
    per_datum = jnp.zeros(layout.num_data)
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        term = site["fn"].log_prob(site["value"]) + log_dets.get(name, 0.0)
        if site["scale"] is not None:
            term = site["scale"] * term
        frame = next((f for f in site["cond_indep_stack"] if f.name == layout.plate), None)
        if frame is None:
            global_term = global_term + jnp.sum(term)
            continue
        axis = jnp.ndim(term) + frame.dim
        assert axis >= 0 and term.shape[axis] == layout.num_data, (name, term.shape)
        per_datum = per_datum + jnp.moveaxis(term, axis, 0).reshape(layout.num_data, -1).sum(axis=1)
    return global_term, per_datum


def _decomposed_draws(
    key: jax.Array, params: VariationalParams, problem: Problem, num: int
) -> tuple[jax.Array, jax.Array]:
    """(S,) global parts and (S, N) per-datum parts of S full-data ELBO draws.

    The draws are those of :func:`avi.vi.elbo.elbo_draws` for the same key; entropies analytic
    where the factor has them, else -log q of the draw.
    """
    layout = problem.layout
    global_key, local_key = jax.random.split(key)
    q_global = global_distribution(params)
    q_local = problem.family.factor.distribution(params.local)
    theta = q_global.rsample(global_key, (num,))
    z = q_local.rsample(local_key, (num,))
    global_part, per_datum = jax.vmap(
        lambda t, zz: per_datum_log_joint(
            problem.model, layout, problem.args, problem.kwargs, t, zz, params.model
        )
    )(theta, z)
    try:
        local_entropy = q_local.entropy()
    except NotImplementedError:
        local_entropy = -q_local.log_prob(z)
    return global_part + entropy(q_global, theta), per_datum + local_entropy


_decomposed = eqx.filter_jit(_decomposed_draws)


def per_datum_elbo_draws(
    fit: Fit, *args: Any, num_particles: int = 100, seed: int = 0, **kwargs: Any
) -> np.ndarray:
    """Draws of every datum's ELBO contribution l_n (module docstring).

    l_n = E_q[log p_n(x_n, z_n | theta, ...)] + H[q(z_n)]: the expected log densities of the
    data plate's slice n (the prior of z_n, the likelihood of x_n) under q(theta) q(z_n), plus
    the entropy of q(z_n). Summed over n and added to E_q[log p(theta)] + H[q(theta)] it is the
    full-data ELBO. The same seed gives the same draws for every fit of the model (common random
    numbers: paired differences between families have a small variance).

    Args:
        fit: a fit.
        *args: new data (the model's positional arguments); none for the training data.
        num_particles: Monte Carlo draws S.
        seed: seed of the draws.
        **kwargs: the model's keyword arguments for the new data.

    Returns:
        (S, N) array; its mean over axis 0 estimates (l_1, ..., l_N).

    Raises:
        FamilyError: new data for a fit that cannot infer them (Factorized, or a Window edge).
        AviError: ``num_particles`` is not a positive integer.
    """
    check_count("num_particles", num_particles, 1)
    on = on_data(fit, args, kwargs)
    groups = draw_groups(seed, num_particles, on.problem.layout)
    return np.concatenate(
        [np.asarray(_decomposed(key, on.params, on.problem, size)[1]) for key, size in groups]
    )
