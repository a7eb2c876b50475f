"""The result of a fit: :class:`Fit` (posterior, draws, ELBO, convergence evidence)."""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from scipy.special import logsumexp
from numpyro.distributions.transforms import biject_to

from avi.data.boundary import convert_arguments
from avi.data.groups import ROW_MASK, GroupedModel, model_arguments
from avi.data.prepare import FeatureScaling
from avi.errors import AviError, FamilyError
from avi.families import Family, count_parameters
from avi.families.aggregate import aggregate_factors
from avi.families.protocol import given_globals
from avi.model import ModelLayout, SiteLayout, TracedModel, trace_model
from avi.model.params import constrain_params, unflatten_params
from avi.model.describe import describe_layout, site_differences
from avi.model.predictive import derived, deterministic, site_dims
from avi.new_data import CHUNK as NEW_DATA_CHUNK
from avi.new_data import NewDataCache, encode
from avi.options import check_bool, check_seed, positive_int
from avi.vi import History, State
from avi.vi.certify import Certificate
from avi.vi.elbo import GLOBAL_FACTOR, elbo_draws, global_distribution
from avi.vi.problem import Problem, VariationalParams
from avi.vi.runner import Certifier, family_label

__all__ = ["Estimate", "Fit"]


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error."""

    mean: float
    stderr: float

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.stderr:.2f}"


ELBO_BLOCK_ELEMENTS = 2e7
"""Full-data ELBO draws are computed in blocks of about this many local coordinates."""

MAX_ELBO_BLOCK = 128
"""At most this many draws per block."""


def elbo_block(num_data: int, local_dim: int) -> int:
    """Draws per block of :meth:`Fit.elbo_draws`: fixed by the problem's shape (memory-bound),
    so that every ``num_particles`` reuses one compiled program."""
    return max(1, min(MAX_ELBO_BLOCK, int(ELBO_BLOCK_ELEMENTS // max(1, num_data * local_dim))))


@dataclass(repr=False)
class Fit:
    """A fitted variational approximation.

    Attributes:
        traced: the model traced on the training data.
        problem: the model, layout, family and data of the compiled step; None for a fit
            loaded with :func:`avi.load`, which holds no training data.
        family: the variational family of the local latents.
        state: the final :class:`avi.vi.State` (parameters, optimiser and stop-rule states,
            step count): everything needed to go on from here.
        history: ELBO estimates per chunk.
        stop_reason: "converged" (certified), "max_steps", "num_steps" or "callback".
        wall_time: seconds spent in optimisation, compilation included.
        scaling: the encoder inputs' standardization.
        args, kwargs: the model's training arguments.
        streamed: whether the data were streamed from a memory map.
    """

    traced: TracedModel
    problem: Problem | None
    family: Family
    state: State
    history: History
    stop_reason: str
    wall_time: float
    scaling: FeatureScaling
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    streamed: bool = False
    certifier: Certifier | None = field(default=None, repr=False, compare=False)
    known_certificate: Certificate | None = field(default=None, repr=False, compare=False)
    _new_data: NewDataCache = field(
        default_factory=NewDataCache, init=False, repr=False, compare=False
    )

    def __repr__(self) -> str:
        """A short summary (the data and parameters are not printed)."""
        layout = self.traced.layout
        if self.stop_reason == "converged":
            evidence = "certified"
        elif self.known_certificate is not None:
            evidence = "certified" if self.known_certificate.certified else "not certified"
        else:
            evidence = "certificate not computed (read fit.certificate)"
        last = f", last ELBO {self.history.elbo[-1]:.6g}" if len(self.history.elbo) else ""
        return (
            f"avi.Fit({family_label(self.family)}; N = {layout.num_data} in plate "
            f"'{layout.plate}'; {self.num_steps} steps, stopped: {self.stop_reason}, {evidence}"
            f"{last}; {self.num_parameters:,} parameters)"
        )

    @property
    def certificate(self) -> Certificate:
        """The convergence evidence per parameter block (:class:`avi.vi.Certificate`): the
        nats a natural-gradient step could still gain, with standard errors and tolerances.

        Computed when the stop rule fired, else on first access (fixed ``num_steps`` fits).
        """
        if self.known_certificate is None:
            if self.certifier is None:
                raise FamilyError(
                    "This fit was saved before its certificate was computed (a fit of fixed "
                    "num_steps computes it on first use) and the training data are not saved: "
                    "read fit.certificate (or fit.converged) before fit.save to keep it."
                )
            self.known_certificate = self.certifier(self.params, 0, False)
        return self.known_certificate

    @property
    def converged(self) -> bool:
        """Whether every parameter block is certified settled (see :attr:`certificate`).

        A stop-rule fit says so only if it stopped on a certificate; a fixed ``num_steps`` fit
        reports whether it happens to be certified where it ended.
        """
        if self.stop_reason == "num_steps":
            return self.certificate.certified
        return self.stop_reason == "converged"

    @property
    def params(self) -> VariationalParams:
        """The variational parameters (unconstrained space)."""
        return self.state.params

    @property
    def model_params(self) -> dict[str, Any]:
        """The model's learned parameters (``numpyro.param`` sites, modules registered with
        ``numpyro.contrib.module``) at the fit's values, in their constrained space, by site
        name: an array for a ``numpyro.param``, the parameter pytree for a module (for
        ``eqx_module("decoder", net)``, ``model_params["decoder$params"]``: combine it with
        ``eqx.filter(net, eqx.is_array, inverse=True)``). A fit loaded with :func:`avi.load`
        has not run the model, so it gives a module's leaves as {key path: array}. Empty when
        the model has none."""
        layouts = self.traced.layout.params
        constrained = constrain_params(layouts, self.params.model)
        return {
            p.name: (
                dict(zip(p.paths, constrained[p.name], strict=True))
                if p.treedef is None
                else jax.tree_util.tree_unflatten(p.treedef, constrained[p.name])
            )
            for p in layouts
        }

    @property
    def learned_model(self) -> Any:
        """The model with its learned parameters substituted (``numpyro.handlers.substitute``):
        a NumPyro model to run, sample (``numpyro.infer.Predictive``) or trace as fitted; the
        model itself when it has none."""
        return self._with_params(self.traced.layout)

    def _with_params(self, layout: ModelLayout) -> Any:
        """The model with the fitted parameters substituted, their tree structures from
        ``layout`` (a trace of the model on the data at hand)."""
        if not layout.params:
            return self.traced.model
        values = unflatten_params(layout.params, self.params.model)
        return handlers.substitute(self.traced.model, data=values)

    @property
    def num_steps(self) -> int:
        """Optimisation steps taken."""
        return int(self.state.step)

    @property
    def num_skipped(self) -> int:
        """Steps whose ELBO or gradient was not finite (their update was not applied)."""
        return int(self.state.skipped)

    @property
    def num_parameters(self) -> int:
        """Number of scalar parameters optimised: q(theta)'s, the local family's and the
        model's learned parameters."""
        return count_parameters(self.params)

    def local_factors(self, *args: Any, **kwargs: Any) -> tuple[jax.Array, ...]:
        """Every datum's factor parameters lambda_n, in the factor's order (``(loc, log_scale)``,
        each of shape (N, D_l), for the diagonal Gaussian).

        Without arguments, for the training data; with new data, one encoder pass. New data
        lacking a neighbour of the encoder's Window (the first datum for offset -1) get NaN
        parameters: pass the preceding datum too and drop its row.

        Raises:
            FamilyError: new data with a family that cannot infer them (Factorized).
        """
        lam = self._factor_params(*args, **kwargs)
        return tuple(lam[k] for k in self.family.factor.parameters)

    def _factor_params(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """lambda of the data, at q(theta)'s mean for factors given the globals."""
        return self._factor_params_at(self.params.global_loc, args, kwargs)

    def _factor_params_at(
        self, theta: jax.Array, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, jax.Array]:
        """lambda of the data given the unconstrained globals ``theta`` (which only factors
        given the globals read)."""
        if not args and not kwargs:
            if self.problem is None and self.family.table_keys:
                return self.family.free_factors(self.params.local)  # F-VI's saved factors
            self._check_in_memory("the training data's factors")
            return self.family.local_params(
                self.params.local, self.problem.local_data, None, theta=theta
            )
        if not self.family.infers_new_data:
            raise FamilyError(
                "A Factorized fit has one free factor per training datum and cannot infer the "
                "posterior of new data. Fit avi.Amortized(encoder) (one encoder pass per new "
                "datum), or fit the new data with avi.fit."
            )
        args, kwargs = convert_arguments(args, kwargs)
        args, kwargs = model_arguments(self.traced.model, args, kwargs)
        features = self._new_data.features(
            self.traced.model,
            self.traced.layout.plate,
            args,
            kwargs,
            self.scaling,
            lambda traced: _check_same_sites(self.traced, traced),
        )
        if features.shape[-1] != self.scaling.mean.shape[0]:
            raise FamilyError(
                f"New data have {features.shape[-1]} features per datum; the fit was trained on "
                f"{self.scaling.mean.shape[0]}. Pass arguments of the same shapes as in training."
            )
        # New data lacking a Window neighbour have no factor the encoder can give (training
        # gave such data free factors): their parameters are NaN.
        local_data = self.family.prepare(features)
        return encode(self.family, self.params.local, local_data, theta, NEW_DATA_CHUNK)

    def _check_in_memory(self, what: str) -> None:
        if self.problem is None:
            raise FamilyError(
                f"This fit was loaded (avi.load) without its training data, so {what} are not "
                "available; pass data, e.g. fit.posterior(x_new)."
            )
        if self.streamed:
            raise FamilyError(
                f"This fit streamed its data from a memory map, so {what} are not held in memory; "
                "pass rows of the data explicitly, e.g. fit.posterior(x[start:stop])."
            )

    def posterior(self, *args: Any, **kwargs: Any) -> dict[str, dist.Distribution]:
        """The variational posterior per latent site, in the model's constrained space.

        Each site gets its factor's marginal (``Normal(loc, scale)`` for the diagonal
        Gaussian); a constrained site gets it pushed through ``biject_to(support)``. Local
        sites keep the model's layout (the data plate's axis where the model puts it).

        New data lacking a neighbour of the encoder's Window get NaN parameters (see
        :meth:`local_factors`).

        A family given the globals (``avi.Amortized(..., given_globals=True)``) has local
        factors q(z_n | theta, x_n) that depend on theta: here they are taken at q(theta)'s
        mean, q(z_n | E_q[theta], x_n), not the marginal of z_n; :meth:`sample` draws
        (theta, z) jointly.

        Args:
            *args: new data (same signature as the model); none for the training data.
            **kwargs: keyword arguments of the model for the new data.
        """
        layout = self.traced.layout
        lam = self._factor_params(*args, **kwargs)
        q_global = {
            "loc": self.params.global_loc[None],
            "log_scale": self.params.global_log_scale[None],
        }
        result = {}
        for site in layout.globals:
            piece = slice(site.offset, site.offset + site.size)
            base = GLOBAL_FACTOR.marginal(
                q_global, piece, lambda a, s=site: a[0].reshape(s.unconstrained_shape)
            )
            result[site.name] = self._site_distribution(site, base)
        # NaN rows (new data lacking a Window neighbour) would fail NumPyro's validation.
        unserved = any(bool(jnp.isnan(v).any()) for v in lam.values())
        unchecked = numpyro.validation_enabled(False) if unserved else contextlib.nullcontext()
        for site in layout.locals:
            piece = slice(site.offset, site.offset + site.size)

            def arrange(a: jax.Array, s: SiteLayout = site) -> jax.Array:
                return jnp.moveaxis(
                    a.reshape((a.shape[0], *s.unconstrained_shape)), 0, s.plate_axis
                )

            with unchecked:
                base = self.family.factor.marginal(lam, piece, arrange)
                result[site.name] = self._site_distribution(site, base)
        return result

    def _site_distribution(self, site: SiteLayout, base: dist.Distribution) -> dist.Distribution:
        """The unconstrained marginal ``base`` in the site's constrained space."""
        support = self.traced.supports[site.name]
        transform = biject_to(support)
        if support is dist.constraints.real:
            return base
        # A correlated factor's marginal (MultivariateNormal) has event dimensions already.
        if isinstance(support, dist.constraints.independent) and (
            support.base_constraint is dist.constraints.real
        ):
            return base.to_event(max(0, support.reinterpreted_batch_ndims - base.event_dim))
        if transform.domain.event_dim > base.event_dim:
            base = base.to_event(transform.domain.event_dim - base.event_dim)
        return dist.TransformedDistribution(base, transform)

    def sample(
        self, num_samples: int, *args: Any, seed: int = 0, **kwargs: Any
    ) -> dict[str, np.ndarray]:
        """Draws from the variational posterior, in the model's constrained space.

        Sites are drawn independently from :meth:`posterior`'s marginals, except for a family
        given the globals, whose draws are joint: theta ~ q(theta), then z_n ~ q(z_n | theta,
        x_n). The model's deterministic sites are computed from each draw (where the data
        are at hand: the training data in memory, or new data).

        Returns:
            site name -> array of shape (num_samples, *site shape).
        """
        num_samples = positive_int("num_samples", num_samples)
        seed = check_seed(seed)
        if given_globals(self.family):
            draws = self._joint_sample(num_samples, seed, args, kwargs)
        else:
            posterior = self.posterior(*args, **kwargs)
            keys = jax.random.split(jax.random.PRNGKey(seed), len(posterior))
            draws = {
                name: np.asarray(d.sample(k, (num_samples,)))
                for k, (name, d) in zip(keys, posterior.items(), strict=True)
            }
        data = self._model_data(args, kwargs)
        if data is None:
            return draws
        model_args, model_kwargs, trace, model = data
        return {**draws, **deterministic(model, draws, model_args, model_kwargs, trace)}

    def _model_data(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], Any, Any] | None:
        """(arguments, keyword arguments, trace, the model with the learned parameters) on new
        data, or on the training data when they are in memory; None otherwise."""
        plate = self.traced.layout.plate
        if args or kwargs:
            model_args, model_kwargs = model_arguments(
                self.traced.model, *convert_arguments(args, kwargs)
            )
            traced = trace_model(self.traced.model, model_args, model_kwargs, plate=plate)
            _check_same_sites(self.traced, traced)
            return model_args, model_kwargs, traced.trace, self._with_params(traced.layout)
        if self.problem is not None and not self.streamed:
            return self.args, self.kwargs, self.traced.trace, self.learned_model
        return None

    def _joint_sample(
        self, num_samples: int, seed: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """theta ~ q(theta), z_n ~ q(z_n | theta, x_n), in the model's constrained space."""
        layout = self.traced.layout
        theta_key, local_key = jax.random.split(jax.random.PRNGKey(seed))
        theta = global_distribution(self.params).sample(theta_key, (num_samples,))
        lam = jax.vmap(lambda t: self._factor_params_at(t, args, kwargs))(theta)
        z = self.family.factor.distribution(lam).sample(local_key)
        draws = {}
        for site in layout.globals:
            value = theta[:, site.offset : site.offset + site.size]
            value = value.reshape((num_samples, *site.unconstrained_shape))
            draws[site.name] = biject_to(self.traced.supports[site.name])(value)
        for site in layout.locals:
            value = z[..., site.offset : site.offset + site.size]

            def arrange(a: jax.Array, s: SiteLayout = site) -> jax.Array:
                return jnp.moveaxis(
                    a.reshape((a.shape[0], *s.unconstrained_shape)), 0, s.plate_axis
                )

            draws[site.name] = biject_to(self.traced.supports[site.name])(jax.vmap(arrange)(value))
        return {name: np.asarray(value) for name, value in draws.items()}

    def elbo(self, num_particles: int = 1000, seed: int = 0) -> Estimate:
        """Full-data ELBO estimated with ``num_particles`` independent draws.

        Returns:
            Estimate(mean, stderr), stderr = sd of the per-draw estimates / sqrt(draws).
        """
        if positive_int("num_particles", num_particles) < 2:
            raise AviError(f"num_particles={num_particles!r}: give an integer >= 2.")
        draws = self.elbo_draws(num_particles, seed)
        return Estimate(float(np.mean(draws)), float(np.std(draws, ddof=1) / math.sqrt(draws.size)))

    def aggregate_posterior(self, *args: Any, **kwargs: Any) -> dict[str, dist.Distribution]:
        """Per local site, the aggregate posterior (1/N) sum_n q(z | x_n) over the training
        data (or new data given as the model's arguments), as a NumPyro distribution
        (``sample``, ``log_prob``) over one datum's value of the site, in its constrained
        space; for a family given the globals the factors are taken at q(theta)'s mean.
        :func:`avi.plot_aggregate_posterior` draws it against the prior."""
        lam = self._factor_params(*args, **kwargs)
        return aggregate_factors(
            self.family.factor, lam, self.traced.layout.locals, self.traced.supports
        )

    def log_evidence(
        self, num_particles: int = 1000, num_estimates: int = 20, seed: int = 0
    ) -> Estimate:
        """The importance-weighted bound on log p(x) (Burda et al. 2016), with K =
        ``num_particles`` joint draws (theta_k, z_k) ~ q and w_k = p(x, theta_k, z_k) /
        q(theta_k, z_k):

            L_K = E[log (1/K) sum_k w_k],   ELBO = L_1 <= L_K <= L_{K+1} <= log p(x),

        so ``log_evidence() - elbo()`` is a lower bound on KL(q || p), tighter as K grows.

        Returns:
            Estimate(mean, stderr) over ``num_estimates`` independent L_K estimates.
        """
        self._check_in_memory("the log evidence")
        num_particles = positive_int("num_particles", num_particles)
        if positive_int("num_estimates", num_estimates) < 2:
            raise AviError(f"num_estimates={num_estimates!r}: give an integer >= 2.")
        layout = self.traced.layout
        block = elbo_block(layout.num_data, layout.local_dim)
        key = jax.random.PRNGKey(check_seed(seed))
        total = num_particles * num_estimates
        weights = [
            np.asarray(
                _full_data_log_weights(jax.random.fold_in(key, i), self.params, self.problem, block)
            )
            for i in range(math.ceil(total / block))
        ]
        log_w = np.concatenate(weights)[:total].astype(np.float64).reshape(num_estimates, -1)
        bounds = logsumexp(log_w, axis=1) - math.log(num_particles)
        return Estimate(float(bounds.mean()), float(bounds.std(ddof=1) / math.sqrt(num_estimates)))

    def elbo_draws(self, num_particles: int, seed: int = 0) -> np.ndarray:
        """Per-draw full-data ELBO estimates, computed in fixed-size blocks that bound memory
        (one compiled program for every ``num_particles``)."""
        self._check_in_memory("full-data ELBO draws")
        layout = self.traced.layout
        block = elbo_block(layout.num_data, layout.local_dim)
        key = jax.random.PRNGKey(check_seed(seed))
        num_particles = positive_int("num_particles", num_particles)
        draws = [
            np.asarray(
                _full_data_draws(jax.random.fold_in(key, i), self.params, self.problem, block)
            )
            for i in range(math.ceil(num_particles / block))
        ]
        return np.concatenate(draws)[:num_particles]

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the fit into the folder ``path``, without pickle and without the training
        data: a JSON description and the arrays (:mod:`avi.saving`); ``avi.load(path, model)``
        gives it back.

        Args:
            path: a folder (created if needed).
            overwrite: replace a fit saved there before.

        Returns:
            The folder.
        """
        from avi.saving import save_fit  # avi.saving builds Fits: imported on use

        return save_fit(self, path, overwrite=check_bool("overwrite", overwrite))

    def to_arviz(
        self,
        *args: Any,
        num_samples: int = 250,
        chains: int = 4,
        seed: int = 0,
        log_likelihood: str = "marginal",
        local_draws: int = 16,
        **kwargs: Any,
    ):
        """The variational posterior as an ``arviz.InferenceData``.

        Groups: ``posterior`` (every latent site and the model's deterministic sites),
        ``posterior_predictive`` (each observed site sampled given each draw),
        ``log_likelihood``, ``observed_data`` and ``constant_data``; axes along the data plate
        are named after it. The draws are independent draws of q split into ``chains`` chains
        of ``num_samples`` (ArviZ's shape checks want several chains; their R-hat is about 1 by
        construction and says nothing of the optimisation, whose evidence is
        :attr:`certificate`). With new data (same signature as the model) the groups are
        ``predictions`` (latents of the new data, deterministic sites, replicates) and
        ``posterior`` (the globals).

        ``log_likelihood`` holds one value per datum of the data plate (per group for grouped
        data) and per draw. ``"marginal"`` (the default): the datum's local latents integrated
        out, at the draw's globals,

            l_n(theta_s) ~= log p(x_n | theta_s) = log int p(x_n, z_n | theta_s) dz_n,

        estimated by importance sampling with the datum's own factor, K = ``local_draws``
        draws z_k ~ q(z_n): log 1/K sum_k p(x_n, z_k | theta_s) / q(z_k)
        (:func:`avi.analysis.loo.marginal_log_likelihood`; biased low by about Var / (2 K) of
        the normalised weights). One variable, named after the plate's observed site (their
        names joined by ``+`` when there are several). This is the likelihood leave-one-out of
        a hierarchical model needs (Vehtari et al. 2017; Merkle et al. 2019): ``az.loo`` on it
        leaves the datum out of its latent's posterior too. ``"conditional"``: each observed
        site's log density given the draw's latents too, log p(x_n | theta_s, z_n,s); cheap,
        but its leave-one-out ratios 1 / p(x_n | theta, z_n) are heavy-tailed when z_n is
        determined mostly by x_n (mean-field eight schools: Pareto k > 0.7 on 5 to 8 of the 8
        schools). Either way ``az.loo`` takes q's draws for the posterior's; :func:`avi.loo`
        corrects them.

        Memory: the predictive groups hold ``chains * num_samples`` values per datum; the
        marginal log likelihood costs ``local_draws`` evaluations of the model per draw.

        Raises:
            AviError: ``log_likelihood`` neither ``"marginal"`` nor ``"conditional"``; bad
                counts.
        """
        if log_likelihood not in ("marginal", "conditional"):
            raise AviError(
                f"log_likelihood={log_likelihood!r}: give 'marginal' (the data's local latents "
                "integrated out) or 'conditional' (given them)."
            )
        local_draws = positive_int("local_draws", local_draws)
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its coming refactor with a FutureWarning on import.
            warnings.filterwarnings(
                "ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning
            )
            import arviz as az

        num_samples = positive_int("num_samples", num_samples)
        chains = positive_int("chains", chains)
        total = chains * num_samples
        draws = self.sample(total, *args, seed=seed, **kwargs)
        plate = self.traced.layout.plate
        data = self._model_data(args, kwargs)
        model_args, model_kwargs, trace, model = data if data is not None else (None,) * 4

        def chained(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: np.reshape(v, (chains, num_samples, *np.shape(v)[1:])) for k, v in values.items()}

        dims = {s.name: _layout_dims(s, plate) for s in self.traced.layout.locals}
        groups: dict[str, dict[str, np.ndarray]] = {"posterior": dict(draws)}
        if trace is not None:
            extra = derived(
                jax.random.PRNGKey(check_seed(seed) + 1), model, draws,
                model_args, model_kwargs, trace, plate,
            )
            computed = [n for n in draws if trace[n]["type"] == "deterministic"]
            for name in (*computed, *extra.deterministic, *extra.replicated, *extra.observed):
                dims[name] = site_dims(trace[name], plate, name)
            groups["posterior"].update(extra.deterministic)
            if isinstance(model, GroupedModel):
                extra = _ungrouped(extra, model.spec, np.asarray(model_kwargs[ROW_MASK]), dims)
            groups["posterior_predictive"] = extra.replicated
            groups["log_likelihood"] = extra.log_likelihood
            if log_likelihood == "marginal" and extra.log_likelihood and not (args or kwargs):
                groups["log_likelihood"] = _marginal_log_likelihood(
                    self, draws, total, local_draws, check_seed(seed) + 2
                )
        if args or kwargs:
            global_names = {s.name for s in self.traced.layout.globals}
            predictions = {k: v for k, v in groups.pop("posterior").items() if k not in global_names}
            predictions.update(groups.pop("posterior_predictive", {}))
            groups.pop("log_likelihood", None)
            return az.from_dict(
                posterior=chained({k: draws[k] for k in global_names}),
                predictions=chained(predictions),
                dims=dims,
                pred_dims=dims,
            )
        constant = {}
        if trace is not None and isinstance(self.traced.model, GroupedModel):
            spec = self.traced.model.spec
            real = np.asarray(model_kwargs[ROW_MASK])
            constant = {spec.index_name: np.nonzero(real)[0]}
            dims[spec.index_name] = [spec.observation_plate]
        elif trace is not None:
            constant = _constant_data(self.traced.model, model_args, model_kwargs, extra.observed)
            for name, value in constant.items():
                names = [f"{name}_dim_{i}" for i in range(np.ndim(value))]
                if np.ndim(value) and np.shape(value)[0] == self.traced.layout.num_data:
                    names[0] = plate
                dims[name] = names
        idata = az.from_dict(
            posterior=chained(groups["posterior"]),
            posterior_predictive=chained(groups.get("posterior_predictive", {})) or None,
            observed_data=extra.observed if trace is not None else None,
            constant_data=constant or None,
            dims=dims,
        )
        if groups.get("log_likelihood"):
            # its own dims: per datum of the data plate (per group for grouped data), where an
            # observed site of the same name may run along another plate
            idata.add_groups(
                log_likelihood=chained(groups["log_likelihood"]),
                dims={k: [plate] for k in groups["log_likelihood"]},
            )
        return idata


def _marginal_log_likelihood(
    fit: Fit, draws: dict[str, np.ndarray], total: int, local_draws: int, seed: int
) -> dict[str, np.ndarray]:
    """{observed sites joined by '+': (S, N) log p(x_n | theta_s)} at the globals of the
    ``total`` draws ``draws`` (constrained, as :meth:`Fit.sample` gives them), the local
    latents integrated out."""
    # avi.analysis consumes Fits: imported on use
    from avi.analysis.loo import marginal_log_likelihood

    layout = fit.traced.layout
    theta = np.zeros((total, layout.global_dim), np.float32)
    for site in layout.globals:
        value = biject_to(fit.traced.supports[site.name]).inv(jnp.asarray(draws[site.name]))
        theta[:, site.offset : site.offset + site.size] = np.reshape(value, (total, site.size))
    values = marginal_log_likelihood(fit, theta, local_draws, seed)
    return {"+".join(layout.observed): values}


def _ungrouped(extra: Any, spec: Any, real: np.ndarray, dims: dict[str, list[str]]) -> Any:
    """A grouped model's observed values and replicates on its real rows, (..., R, ...) along
    the observation plate, instead of the padded (J, S) layout the engine fits (padding rows
    are copies, not data). Rows come sorted by group, each group's rows in their order in the
    data (the data's own order when they were sorted by group); the log likelihood stays per
    group. ``dims`` is updated in place."""
    observed = {}
    for name, value in extra.observed.items():
        value = np.asarray(value)
        if value.shape[:2] != real.shape:
            observed[name] = value
            continue
        observed[name] = value[real]
        dims[name] = [spec.observation_plate] + [
            f"{name}_dim_{i}" for i in range(1, value.ndim - 1)
        ]
    replicated = {
        name: np.asarray(value)[:, real] if np.shape(value)[1:3] == real.shape else value
        for name, value in extra.replicated.items()
    }
    return extra._replace(observed=observed, replicated=replicated)


def _constant_data(
    model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], observed: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The model's array arguments that are not observations, named by its signature."""
    try:
        parameters = [p.name for p in inspect.signature(model).parameters.values()]
    except (TypeError, ValueError):
        parameters = []
    named = [
        (parameters[i] if i < len(parameters) else f"arg{i}", a) for i, a in enumerate(args)
    ] + list(kwargs.items())
    constant = {}
    for name, value in named:
        if not isinstance(value, (np.ndarray, jax.Array)) or name in observed:
            continue
        value = np.asarray(value)
        if not any(v.shape == value.shape and np.array_equal(v, value) for v in observed.values()):
            constant[name] = value
    return constant


def _layout_dims(site: SiteLayout, plate: str) -> list[str]:
    dims = [f"{site.name}_dim_{i}" for i in range(len(site.shape) + 1)]
    dims[site.plate_axis] = plate
    return dims


_full_data_draws = eqx.filter_jit(
    lambda key, params, problem, num: elbo_draws(key, params, problem, None, num)
)

_full_data_log_weights = eqx.filter_jit(
    lambda key, params, problem, num: elbo_draws(key, params, problem, None, num, True)
)
"""log p(x, theta, z) - log q(theta, z) of ``num`` joint draws (the sticking-the-landing form
of the ELBO draw is exactly this log weight)."""


def _check_same_sites(trained: TracedModel, new: TracedModel) -> None:
    differences = site_differences(describe_layout(trained), new)
    if differences:
        raise FamilyError(
            "The model traced on the new data does not match the fitted one: "
            f"{'; '.join(differences)}. Pass new data of the same kind (same per-datum shapes) "
            "to the model the fit was trained on."
        )
