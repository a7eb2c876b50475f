"""Diagnostics of an amortized fit: refinement, the F-VI gradient, generalization, PSIS.

Notation (paper, section 2): q(theta, z) = q(theta) prod_n q(z_n), Gaussian in unconstrained
space; an amortized fit gives q(z_n) = N(f_phi(x_n)). Every function here works through the
per-datum factors nu_n = (mu_n, log sigma_n) that a fit assigns to the data
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

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avi.vi.elbo import Problem, VariationalParams, elbo_draws, gaussian_entropy
from avi.errors import AviError, FamilyError
from avi.families import Factorized
from avi.fit import Estimate, Fit
from avi.fit import fit as fit_model
from avi.model import ModelLayout, constrained_trace, trace_model
from avi.vi import default_optimizer

FIT_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(fit_model).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)
"""Keyword arguments that :func:`avi.fit` takes for itself; all others go to the model."""

DRAW_BUDGET = 2e7
"""Floats of latent draws held at once; larger requests are computed in groups of draws."""

ROUNDING = 1e-5
"""Log weights that vary by less than this fraction of their size are constant up to float32
rounding (PSIS's tail fit would return inf on such noise)."""

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into (options of :func:`avi.fit`, the model's keyword arguments)."""
    fit_options = {k: v for k, v in options.items() if k in FIT_OPTIONS}
    model_kwargs = {k: v for k, v in options.items() if k not in FIT_OPTIONS}
    return fit_options, model_kwargs


# ------------------------------------------------------------------ the fit's factors on data


class _OnData(NamedTuple):
    """The model on one data set with the fit's factors there, as a Factorized problem.

    Attributes:
        problem: model, layout and data, with the Factorized family (free factors per datum).
        params: q(theta) of the fit and, as free tables, the factors it assigns to the data.
    """

    problem: Problem
    params: VariationalParams


def _device(value: Any) -> Any:
    return jnp.asarray(value) if isinstance(value, np.ndarray) else value


def _factorized_problem(
    model: Any, layout: ModelLayout, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Problem:
    return Problem(
        model=model,
        layout=layout,
        family=Factorized(),
        args=tuple(_device(a) for a in args),
        kwargs={k: _device(v) for k, v in kwargs.items()},
        local_data=Factorized().prepare(np.zeros((layout.num_data, 0), np.float32)),
    )


def _on_data(fit: Fit, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _OnData:
    """The fit's factors on its training data (no arguments) or on new data.

    Raises:
        FamilyError: new data for a Factorized fit, or data it cannot infer (see
            :meth:`avi.Fit.local_factors`).
    """
    loc, log_scale = fit.local_factors(*args, **kwargs)
    if args or kwargs:
        traced = trace_model(fit.traced.model, args, kwargs, plate=fit.traced.layout.plate)
        problem = _factorized_problem(traced.model, traced.layout, args, kwargs)
    else:
        base = fit.problem
        problem = _factorized_problem(base.model, base.layout, base.args, base.kwargs)
    params = VariationalParams(
        fit.params.global_loc, fit.params.global_log_scale, {"loc": loc, "log_scale": log_scale}
    )
    return _OnData(problem, params)


def _draw_groups(
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


def _check_count(name: str, value: Any, minimum: int) -> None:
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

    Returns:
        (scalar global term, (N,) per-datum terms).
    """
    trace, log_dets = constrained_trace(model, layout, args, kwargs, theta, z)
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

    The draws are those of :func:`avi.vi.elbo.elbo_draws` for the same key; entropies analytic.
    """
    layout = problem.layout
    loc, log_scale = params.local["loc"], params.local["log_scale"]
    global_key, local_key = jax.random.split(key)
    eps = jax.random.normal(global_key, (num, layout.global_dim))
    eta = jax.random.normal(local_key, (num, layout.num_data, layout.local_dim))
    theta = params.global_loc + jnp.exp(params.global_log_scale) * eps
    z = loc + jnp.exp(log_scale) * eta
    global_part, per_datum = jax.vmap(
        lambda t, zz: per_datum_log_joint(
            problem.model, layout, problem.args, problem.kwargs, t, zz
        )
    )(theta, z)
    local_entropy = jnp.sum(log_scale, axis=1) + layout.local_dim * _HALF_LOG_2PI_E
    return global_part + gaussian_entropy(params.global_log_scale), per_datum + local_entropy


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
    _check_count("num_particles", num_particles, 1)
    on = _on_data(fit, args, kwargs)
    groups = _draw_groups(seed, num_particles, on.problem.layout)
    return np.concatenate(
        [np.asarray(_decomposed(key, on.params, on.problem, size)[1]) for key, size in groups]
    )


# ------------------------------------------------------------------------------ refinement


@cache
def _frozen_globals(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` on the local factors, no update of q(theta) (cached: one compile)."""

    def free(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: "free", tree)

    def labels(params: Any) -> Any:
        if isinstance(params, VariationalParams):
            return VariationalParams("frozen", "frozen", free(params.local))
        return free(params)

    return optax.multi_transform({"free": optimizer, "frozen": optax.set_to_zero()}, labels)


def refine(fit: Fit, *args: Any, num_steps: int | None = None, **options: Any) -> Fit:
    """Amortize, then refine: F-VI started from the encoder's factors (semi-amortized VI).

    Every datum gets a free factor nu_n initialised at the fit's f_phi(x_n)
    (:meth:`avi.Fit.local_factors`), and the ELBO is maximised over the free factors with
    ``avi.fit(..., family=avi.Factorized(), init=...)``. On the training data q(theta) starts
    from the fit's and is optimised too: this is the paper's section 5 diagnostic (a few F-VI
    steps from the A-VI solution; the ELBO improves iff the inference function is not ideal, by
    Prop. 2.1 and Theorem 3.4), and its limit is F-VI's optimum. On new data q(theta) is held
    at the fit's (as in ``fit.posterior(new data)``): only the new data's factors move.

    Args:
        fit: an amortized or constant fit.
        *args: new data (the model's positional arguments); none to refine on the training data.
        num_steps: refinement steps; None (default) lets the stop rule decide (``max_steps``,
            ``tol``), which with the default optimizer anneals the learning rate: a fixed
            number of steps at a constant rate leaves Adam's stationary jitter (about 0.1-0.2
            nats on the linear model with N = 2,000), which matters when the gap is small.
        **options: options of :func:`avi.fit` (``optimizer``, ``num_particles``, ``seed``, ...)
            and, for new data, the model's keyword arguments.

    Returns:
        The refined, Factorized :class:`avi.Fit`.

    Raises:
        FamilyError: ``fit`` is Factorized (its factors are free already), or the new data
            cannot be inferred (see :meth:`avi.Fit.local_factors`).
        AviError: an option that refine sets itself (``family``, ``init``, ``plate``).
    """
    if not fit.family.infers_new_data:
        raise FamilyError(
            f"refine(fit) needs an amortized or constant fit; this fit's family is "
            f"{fit.family!r}, whose per-datum factors are free already (F-VI)."
        )
    fit_options, model_kwargs = split_options(options)
    reserved = sorted({"family", "init", "plate"} & fit_options.keys())
    if reserved:
        raise AviError(f"refine sets {', '.join(reserved)} itself; do not pass them.")
    on = _on_data(fit, args, model_kwargs)
    new_data = bool(args or model_kwargs)
    if new_data:
        own = fit_options.get("optimizer")
        fit_options["optimizer"] = _frozen_globals(own if own is not None else default_optimizer())
        fit_options.setdefault("anneal", own is None)
    return fit_model(
        fit.traced.model,
        *(args if new_data else fit.args),
        family=Factorized(),
        init=on.params,
        num_steps=num_steps,
        plate=fit.traced.layout.plate,
        **fit_options,
        **(model_kwargs if new_data else fit.kwargs),
    )


# -------------------------------------------------------------------- F-VI gradient at A-VI


class GradientNorm(NamedTuple):
    """Norm of a Monte Carlo gradient estimate, with the norm its noise alone would have.

    Attributes:
        norm: ||g-hat||, g-hat the mean of the per-draw gradients.
        noise: sqrt(sum_i Var(g-hat_i)), estimated from the per-draw gradients: the expected
            norm of g-hat if the true gradient were zero. A norm within a few ``noise`` of
            zero is zero within Monte Carlo error.
    """

    norm: float
    noise: float


def _gradient_moments(
    key: jax.Array, params: VariationalParams, problem: Problem, num: int
) -> tuple[jax.Array, jax.Array]:
    """Mean and centred sum of squares of ``num`` per-draw gradients w.r.t. the local factors."""

    def one(draw_key: jax.Array) -> jax.Array:
        def elbo(local: Any) -> jax.Array:
            return elbo_draws(draw_key, params._replace(local=local), problem, None, 1, True)[0]

        grads = jax.grad(elbo)(params.local)
        return jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads)])

    per_draw = jax.vmap(one)(jax.random.split(key, num))
    mean = jnp.mean(per_draw, axis=0)
    return mean, jnp.sum((per_draw - mean) ** 2, axis=0)


_moments = eqx.filter_jit(_gradient_moments)


def factor_gradient_norm(
    fit: Fit, *args: Any, num_particles: int = 1000, seed: int = 0, **kwargs: Any
) -> GradientNorm:
    """Norm of the F-VI gradient at the fit's factors: the paper's section 5 diagnostic.

    g = d ELBO / d(mu_n, log sigma_n)_{n=1..N}, the gradient of the full-data ELBO with respect
    to free per-datum factors, evaluated where the fit puts them (the encoder's output) and at
    the fit's q(theta). At F-VI's optimum g = 0, so g vanishes at an amortized fit whose
    encoder reaches that optimum (an ideal inference function, Theorem 3.4); a g far from zero
    says F-VI steps from the fit would raise the ELBO (:func:`refine`). Estimated with
    sticking-the-landing draws (Roeder et al. 2017): unbiased, and without the noise of the
    entropy's score, so that ``noise`` is small near a good fit.

    Args:
        fit: a fit (on the training data any family; on new data one that infers them).
        *args: new data; none for the training data.
        num_particles: Monte Carlo draws.
        seed: seed of the draws.
        **kwargs: the model's keyword arguments for the new data.

    Returns:
        The :class:`GradientNorm`.
    """
    _check_count("num_particles", num_particles, 2)
    on = _on_data(fit, args, kwargs)
    count, mean, squares = 0, None, None
    for key, size in _draw_groups(seed, num_particles, on.problem.layout, cost=8):
        group_mean, group_squares = (
            np.asarray(a, np.float64) for a in _moments(key, on.params, on.problem, size)
        )
        if mean is None:
            count, mean, squares = size, group_mean, group_squares
            continue
        total = count + size
        delta = group_mean - mean
        squares = squares + group_squares + delta**2 * count * size / total  # Chan et al. 1979
        mean = mean + delta * size / total
        count = total
    variance = squares / (count - 1)
    return GradientNorm(float(np.linalg.norm(mean)), float(np.sqrt(np.sum(variance) / count)))


# ------------------------------------------------------------------------- generalization


class GeneralizationGap(NamedTuple):
    """Per-datum ELBO on held-out against training data (:func:`generalization_gap`).

    Attributes:
        train: mean of l_n over the training data.
        heldout: mean of l_n over the held-out data.
        difference: heldout - train; negative when the encoder serves new data worse.
    """

    train: Estimate
    heldout: Estimate
    difference: Estimate


def _mean_contribution(draws: np.ndarray) -> Estimate:
    """Mean over data of the per-datum estimates, stderr = sd over data / sqrt(N)."""
    per_datum = draws.mean(axis=0)
    return Estimate(
        float(per_datum.mean()), float(per_datum.std(ddof=1) / math.sqrt(per_datum.size))
    )


def generalization_gap(
    fit: Fit, *heldout_args: Any, num_particles: int = 100, seed: int = 0, **heldout_kwargs: Any
) -> GeneralizationGap:
    """How much worse the encoder serves held-out data than its training data.

    For a data set D of size N_D, with the fit's q(theta) and the factors its encoder gives D's
    data, the per-datum ELBO is (1/N_D) sum_{n in D} l_n, l_n the ELBO contribution of datum n
    (module docstring): the ELBO of the model on D minus the global part E_q[log p(theta)] +
    H[q(theta)], divided by N_D. Subtracting the global part, which a data set carries once
    whatever its size, makes data sets of different sizes comparable. Both data sets use the
    same q(theta), fitted to the training data (the setting of the paper's deep generative
    experiment: test reconstruction against training). Each mean's standard error is the sd of
    the estimated l_n over the data over sqrt(N_D): it counts the variation between data (held-
    out data are a sample) as well as Monte Carlo error.

    Args:
        fit: an amortized or constant fit.
        *heldout_args: the held-out data, as the model's positional arguments.
        num_particles: Monte Carlo draws per data set.
        seed: seed of the draws.
        **heldout_kwargs: the model's keyword arguments for the held-out data (all of them;
            the training data's are not reused).

    Returns:
        The :class:`GeneralizationGap`; ``difference`` near 0 within its stderr means the
        encoder generalizes.

    Raises:
        FamilyError: the fit cannot infer new data (Factorized), or no held-out data given.
    """
    if not fit.family.infers_new_data:
        raise FamilyError(
            "generalization_gap(fit) needs an amortized or constant fit: a Factorized fit has "
            "no factors for held-out data."
        )
    if not (heldout_args or heldout_kwargs):
        raise FamilyError("generalization_gap(fit, *heldout_args): give the held-out data.")
    train = _mean_contribution(per_datum_elbo_draws(fit, num_particles=num_particles, seed=seed))
    heldout = _mean_contribution(
        per_datum_elbo_draws(
            fit, *heldout_args, num_particles=num_particles, seed=seed, **heldout_kwargs
        )
    )
    difference = Estimate(heldout.mean - train.mean, math.hypot(heldout.stderr, train.stderr))
    return GeneralizationGap(train, heldout, difference)


# ------------------------------------------------------------------------------------ PSIS


def _log_weights(
    key: jax.Array, params: VariationalParams, problem: Problem, num: int
) -> jax.Array:
    """log p(x, theta, z) + log|J| - log q(theta, z) for ``num`` draws from q."""
    return elbo_draws(key, params, problem, None, num, stop_gradient_entropy_params=True)


_log_weight_draws = eqx.filter_jit(_log_weights)


def psis_khat(fit: Fit, num_samples: int = 1000, seed: int = 0) -> float:
    """Pareto k-hat of the importance weights p(x, theta, z) / q(theta, z) (Yao et al. 2018).

    With draws (theta, z) ~ q on the full data, log w = log p(x, theta, z) - log q(theta, z)
    (in unconstrained space, Jacobians included); ArviZ's ``psislw`` fits a generalized Pareto
    distribution to the largest weights and returns its shape k. Yao et al.'s reading:
    k < 0.5, q is close to the posterior and importance sampling corrects it well; 0.5 to 0.7,
    usable with care; k > 0.7, q misses mass of the posterior (too narrow or misplaced)
    and estimates from it are unreliable. For a Gaussian target N(0, s_p^2) and proposal
    N(0, s_q^2) with s_q < s_p the exact tail shape is k = 1 - s_q^2 / s_p^2.

    Note: q here is the joint over theta and all N local latents, and log w sums N per-datum
    terms, so small mismatches of the factors add up with N: with many data k-hat easily
    exceeds 0.7 (an encoder of x_n alone on the saw model, N = 500: k-hat 5.5; F-VI: 0.58),
    and it flags whole-q problems that the marginals hide. Where the posterior dependence
    between theta and the z_n is weak it stays moderate (the linear model: 0.4-0.55 for F-VI
    and for degree 1 from N = 20 to 2,000). Compare fits of one model with it rather than
    reading it against the thresholds alone.

    Args:
        fit: a fit (its training data).
        num_samples: draws from q (ArviZ needs enough for the tail: >= 100; 1000 or more).
        seed: seed of the draws.

    Returns:
        k-hat; -inf when the log weights are equal up to float32 rounding (q is the posterior:
        the weights are bounded, the limit k -> -inf of the generalized Pareto family).

    Raises:
        AviError: ``num_samples`` is not an integer >= 100.
    """
    _check_count("num_samples", num_samples, 100)
    on = _on_data(fit, (), {})
    log_w = np.concatenate(
        [
            np.asarray(_log_weight_draws(key, on.params, on.problem, size), np.float64)
            for key, size in _draw_groups(seed, num_samples, on.problem.layout)
        ]
    )
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its coming refactor with a FutureWarning on import; importing it
        # here keeps its cost (xarray, ...) out of ``import avi``.
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz as az

    if np.ptp(log_w) <= ROUNDING * max(1.0, float(np.max(np.abs(log_w)))):
        return -math.inf  # constant weights: q is the posterior up to float32 rounding
    _, khat = az.psislw(log_w)
    return float(khat)
