"""``avi.fit``: fit a NumPyro model with a variational family, and the :class:`Fit` it returns.

``avi.fit`` is orchestration: it prepares the problem (:mod:`avi.data.prepare`), builds the pure pair
``init``/``step`` (:mod:`avi.vi`), and hands both to the runner (:func:`avi.vi.run`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from numpyro.distributions.transforms import biject_to

from avi.amortization_warning import warn_if_not_amortizable
from avi.vi.elbo import Problem, VariationalParams, elbo_draws
from avi.errors import AviError, ConvergenceWarning, FamilyError
from avi.families import Family, as_family, count_parameters
from avi.data.rows import per_datum_features
from avi.model import Model, SiteLayout, TracedModel, trace_model
from avi.data.shard import data_mesh, shard_rows
from avi.data.prepare import FeatureScaling, prepare_in_memory, prepare_streamed
from avi.data.stream import BatchSource, is_streamed
from avi.vi import History, PlateauRule, State, fit_keys, run
from avi.vi.algorithm import restrict
from avi.vi.build import algorithm_for
from avi.vi.certify import Certificate, certify
from avi.vi.runner import Callback, Certifier

__all__ = ["Estimate", "Fit", "History", "fit"]


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


@dataclass
class Fit:
    """A fitted variational approximation.

    Attributes:
        traced: the model traced on the training data.
        problem: the model, layout, family and data of the compiled step.
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
    problem: Problem
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

    @property
    def certificate(self) -> Certificate:
        """The convergence evidence per parameter block (:class:`avi.vi.Certificate`): the
        nats a natural-gradient step could still gain, with standard errors and tolerances.

        Computed when the stop rule fired, else on first access (fixed ``num_steps`` fits).
        """
        if self.known_certificate is None:
            self.known_certificate = self.certifier(self.params, 0)
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
    def num_steps(self) -> int:
        """Optimisation steps taken."""
        return int(self.state.step)

    @property
    def num_skipped(self) -> int:
        """Steps whose ELBO or gradient was not finite (their update was not applied)."""
        return int(self.state.skipped)

    @property
    def num_parameters(self) -> int:
        """Number of scalar variational parameters (globals and locals)."""
        return count_parameters(self.params)

    def local_factors(self, *args: Any, **kwargs: Any) -> tuple[jax.Array, jax.Array]:
        """(loc, log_scale) of every datum's local factor, shape (N, D_l) each.

        Without arguments, for the training data; with new data, one encoder pass.

        Raises:
            FamilyError: new data with a family that cannot infer them (Factorized), or with
                data lacking a Window neighbour.
        """
        if not args and not kwargs:
            self._check_in_memory("the training data's factors")
            return self.family.local_params(self.params.local, self.problem.local_data, None)
        if not self.family.infers_new_data:
            raise FamilyError(
                "A Factorized fit has one free factor per training datum and cannot infer the "
                "posterior of new data. Fit avi.Amortized(encoder) (one encoder pass per new "
                "datum), or fit the new data with avi.fit."
            )
        traced = trace_model(self.traced.model, args, kwargs, plate=self.traced.layout.plate)
        _check_same_sites(self.traced, traced)
        features = self.scaling.apply(per_datum_features(traced, args, kwargs))
        if features.shape[1] != self.scaling.mean.shape[0]:
            raise FamilyError(
                f"New data have {features.shape[1]} features per datum; the fit was trained on "
                f"{self.scaling.mean.shape[0]}. Pass arguments of the same shapes as in training."
            )
        local_data = self.family.prepare(features)
        if bool(jnp.any(local_data.free_slot >= 0)):
            raise FamilyError(
                "Some new data lack a neighbour of the encoder's Window (e.g. the first datum "
                "for offset -1); their factors are free parameters that one encoder pass cannot "
                "give. Pass the preceding data too and drop those rows from the result."
            )
        return self.family.local_params(self.params.local, local_data, None)

    def _check_in_memory(self, what: str) -> None:
        if self.streamed:
            raise FamilyError(
                f"This fit streamed its data from a memory map, so {what} are not held in memory; "
                "pass rows of the data explicitly, e.g. fit.posterior(x[start:stop])."
            )

    def posterior(self, *args: Any, **kwargs: Any) -> dict[str, dist.Distribution]:
        """The variational posterior per latent site, in the model's constrained space.

        A site with real support gets ``Normal(loc, scale)``, a constrained site that Normal
        pushed through ``biject_to(support)``. Local sites keep the model's layout (the data
        plate's axis where the model puts it).

        Args:
            *args: new data (same signature as the model); none for the training data.
            **kwargs: keyword arguments of the model for the new data.
        """
        layout = self.traced.layout
        loc, log_scale = self.local_factors(*args, **kwargs)
        result = {}
        for site in layout.globals:
            piece = slice(site.offset, site.offset + site.size)
            result[site.name] = self._site_distribution(
                site,
                self.params.global_loc[piece].reshape(site.unconstrained_shape),
                self.params.global_log_scale[piece].reshape(site.unconstrained_shape),
            )
        for site in layout.locals:
            piece = slice(site.offset, site.offset + site.size)
            shape = (loc.shape[0],) + site.unconstrained_shape
            result[site.name] = self._site_distribution(
                site,
                jnp.moveaxis(loc[:, piece].reshape(shape), 0, site.plate_axis),
                jnp.moveaxis(log_scale[:, piece].reshape(shape), 0, site.plate_axis),
            )
        return result

    def _site_distribution(
        self, site: SiteLayout, loc: jax.Array, log_scale: jax.Array
    ) -> dist.Distribution:
        base = dist.Normal(loc, jnp.exp(log_scale))
        support = self.traced.supports[site.name]
        transform = biject_to(support)
        if support is dist.constraints.real:
            return base
        if isinstance(support, dist.constraints.independent) and (
            support.base_constraint is dist.constraints.real
        ):
            return base.to_event(support.reinterpreted_batch_ndims)
        if transform.domain.event_dim:
            base = base.to_event(transform.domain.event_dim)
        return dist.TransformedDistribution(base, transform)

    def sample(
        self, num_samples: int, *args: Any, seed: int = 0, **kwargs: Any
    ) -> dict[str, np.ndarray]:
        """Draws from the variational posterior, in the model's constrained space.

        Returns:
            site name -> array of shape (num_samples, *site shape).
        """
        posterior = self.posterior(*args, **kwargs)
        keys = jax.random.split(jax.random.PRNGKey(seed), len(posterior))
        return {
            name: np.asarray(d.sample(k, (num_samples,)))
            for k, (name, d) in zip(keys, posterior.items(), strict=True)
        }

    def elbo(self, num_particles: int = 1000, seed: int = 0) -> Estimate:
        """Full-data ELBO estimated with ``num_particles`` independent draws.

        Returns:
            Estimate(mean, stderr), stderr = sd of the per-draw estimates / sqrt(draws).
        """
        if not isinstance(num_particles, int) or num_particles < 2:
            raise AviError(f"num_particles={num_particles!r}: give an integer >= 2.")
        draws = self.elbo_draws(num_particles, seed)
        return Estimate(float(np.mean(draws)), float(np.std(draws, ddof=1) / math.sqrt(draws.size)))

    def elbo_draws(self, num_particles: int, seed: int = 0) -> np.ndarray:
        """Per-draw full-data ELBO estimates, computed in fixed-size blocks that bound memory
        (one compiled program for every ``num_particles``)."""
        self._check_in_memory("full-data ELBO draws")
        layout = self.traced.layout
        block = elbo_block(layout.num_data, layout.local_dim)
        key = jax.random.PRNGKey(seed)
        draws = [
            np.asarray(_full_data_draws(jax.random.fold_in(key, i), self.params, self.problem, block))
            for i in range(math.ceil(num_particles / block))
        ]
        return np.concatenate(draws)[:num_particles]

    def to_arviz(self, num_samples: int = 1000, seed: int = 0):
        """The variational posterior as an ``arviz.InferenceData`` (one chain of draws)."""
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its coming refactor with a FutureWarning on import.
            warnings.filterwarnings(
                "ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning
            )
            import arviz as az

        samples = self.sample(num_samples, seed=seed)
        return az.from_dict(posterior={k: v[None] for k, v in samples.items()})


_full_data_draws = eqx.filter_jit(
    lambda key, params, problem, num: elbo_draws(key, params, problem, None, num)
)


def _check_same_sites(trained: TracedModel, new: TracedModel) -> None:
    def signature(t: TracedModel):
        return [(s.name, s.unconstrained_shape) for s in t.layout.globals + t.layout.locals]

    if signature(trained) != signature(new):
        raise FamilyError(
            "The model traced on the new data has different latent sites or shapes than in "
            f"training ({signature(new)} vs {signature(trained)}). Pass new data of the same "
            "kind (same per-datum shapes)."
        )


def _check_options(
    num_data: int,
    num_steps: int | None,
    max_steps: int,
    tol: float,
    batch_size: int | None,
    num_particles: int,
) -> None:
    def positive_int(name: str, value: Any) -> None:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise AviError(f"{name}={value!r}: give a positive integer.")

    if num_steps is not None:
        positive_int("num_steps", num_steps)
    positive_int("max_steps", max_steps)
    positive_int("num_particles", num_particles)
    if batch_size is not None:
        positive_int("batch_size", batch_size)
        if batch_size > num_data:
            raise AviError(
                f"batch_size={batch_size} exceeds the number of data N={num_data}; "
                "leave it None for full-batch optimisation."
            )
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise AviError(f"tol={tol!r}: give a positive number.")


def _checked_init(init: Any, params: VariationalParams) -> VariationalParams:
    """``init`` if it matches the structure and shapes of ``params``.

    Raises:
        AviError: it does not.
    """
    expected = jax.tree_util.tree_map(jnp.shape, eqx.filter(params, eqx.is_array))
    given = (
        jax.tree_util.tree_map(jnp.shape, eqx.filter(init, eqx.is_array))
        if isinstance(init, VariationalParams)
        else None
    )
    if given != expected:
        raise AviError(
            "init must be avi VariationalParams with the family's structure and shapes "
            f"{expected}; got {given if given is not None else type(init).__name__}."
        )
    return jax.tree_util.tree_map(
        lambda given_leaf, own: (
            jnp.asarray(given_leaf, dtype=own.dtype) if eqx.is_array(own) else own
        ),
        init,
        params,
    )


def fit(
    model: Model,
    *args: Any,
    family: Any = "amortized",
    seed: int = 0,
    num_steps: int | None = None,
    max_steps: int = 20_000,
    tol: float = 1e-4,
    batch_size: int | None = None,
    num_particles: int = 1,
    sticking_the_landing: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    anneal: bool | None = None,
    plate: str | None = None,
    progress: bool = True,
    chunk_size: int = 100,
    callback: Callback | None = None,
    devices: Sequence[jax.Device] | None = None,
    init: VariationalParams | None = None,
    **kwargs: Any,
) -> Fit:
    """Fit ``model(*args, **kwargs)`` by maximising the ELBO over a variational family.

    q(theta, z) = q(theta) prod_n q(z_n), all Gaussian in unconstrained space; the family
    decides how the local factors q(z_n) are parameterised (paper, section 2).

    Args:
        model: a NumPyro model with a data plate holding the local latents and observations.
        *args: the model's positional arguments; arrays whose leading axis has the data
            plate's size are per-datum (sliced for minibatches, fed to the encoder).
        family: ``avi.Factorized()``, ``avi.Constant()``, ``avi.Amortized(encoder, inputs)`` or
            one of the strings "factorized", "constant", "amortized" (MLP of width 32). With
            "amortized" (the default) the model's structure is checked first (``avi.check``)
            and an ``avi.AmortizationWarning`` explains why amortization must leave a gap on a
            model with no ideal inference function of the datum; an explicit
            ``avi.Amortized(...)`` is taken as a deliberate choice and not checked (nor is
            streamed data, which the check would read whole).
        seed: seed of initialisation, minibatches and Monte Carlo draws.
        num_steps: run exactly this many steps (the stop rule is off).
        max_steps: cap on the number of steps when the stop rule decides.
        tol: the stop rule's relative-change threshold (see :class:`avi.vi.PlateauRule`).
        batch_size: data per step; None chooses (see :func:`avi.data.prepare.resolve_batch_size`): the full
            batch for F-VI or N <= 8192, else 1024.
        num_particles: Monte Carlo draws per step.
        sticking_the_landing: use the sticking-the-landing gradient estimator (Roeder et al.
            2017; unbiased, and its variance vanishes as q approaches the posterior).
        optimizer: any optax GradientTransformation (default Adam, learning rate 1e-2).
        learning_rate: the default optimizer's learning rate (held in its state: fits that
            differ only in it share one compiled program); not with ``optimizer``.
        anneal: with the stop rule, divide the learning rate by 10 each time the ELBO goes
            flat, twice, before declaring convergence (default: on for the default optimizer,
            off for a user's, whose schedule is kept as given).
        plate: name of the data plate when the automatic choice must be overridden.
        progress: show a progress bar with the running ELBO.
        chunk_size: steps per compiled chunk (and between stop-rule checks).
        callback: called after every chunk as ``callback(step, params, problem)``; a true
            return value stops the fit. Its time is excluded from ``wall_time`` and
            ``history.wall_time``.
        devices: devices to shard the data over (default: all, when they divide N).
        init: start from these variational parameters (e.g. another fit's).
        **kwargs: the model's keyword arguments.

    Returns:
        The :class:`Fit`.
    """
    default_amortized = isinstance(family, str) and family.lower() == "amortized"
    if default_amortized and not is_streamed(args, kwargs):
        warn_if_not_amortizable(model, args, kwargs, plate, family=as_family(family))
    family = as_family(family)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise AviError(f"chunk_size={chunk_size!r}: give a positive integer.")
    if is_streamed(args, kwargs):
        prepared = prepare_streamed(model, args, kwargs, plate, family, batch_size, chunk_size, seed)
    else:
        prepared = prepare_in_memory(model, args, kwargs, plate, family, batch_size)
    layout = prepared.traced.layout
    _check_options(layout.num_data, num_steps, max_steps, tol, batch_size, num_particles)
    algorithm = algorithm_for(prepared, optimizer, learning_rate, num_particles, sticking_the_landing)
    init_key, run_key, check_key = fit_keys(seed)
    params = None if init is None else _checked_init(init, algorithm.initial_params(init_key))
    state = algorithm.init(init_key, params)
    mesh = data_mesh(devices, layout.num_data)
    if mesh is not None:
        algorithm = shard_rows(algorithm, layout.num_data, mesh)
        state = shard_rows(state, layout.num_data, mesh)
    if anneal is None:
        anneal = optimizer is None
    rule = PlateauRule(tol, stages=3 if anneal else 1) if num_steps is None else None
    certifier = _certifier(
        algorithm.problem, bool(sticking_the_landing), jax.random.fold_in(check_key, 1), prepared.source
    )
    result = run(
        algorithm,
        state,
        run_key,
        int(num_steps) if num_steps is not None else int(max_steps),
        chunk_size=chunk_size,
        rule=rule,
        check_key=check_key,
        certifier=certifier,
        source=prepared.source,
        progress=progress,
        callback=callback,
    )
    fitted = Fit(
        traced=prepared.traced,
        problem=algorithm.problem,
        family=family,
        state=result.state,
        history=result.history,
        stop_reason=result.reason,
        wall_time=result.wall_time,
        scaling=prepared.scaling,
        args=tuple(args),
        kwargs=dict(kwargs),
        streamed=prepared.source is not None,
        certifier=certifier,
        known_certificate=result.certificate,
    )
    if result.reason == "max_steps":
        _warn_unconverged(fitted)
    return fitted


STREAMED_CERTIFICATE_ROWS = 65_536
"""Rows of streamed data each certificate group reads (a fresh uniform subset per group)."""


def _certifier(
    problem: Problem, sticking_the_landing: bool, key: jax.Array, source: BatchSource | None
) -> Certifier:
    """The certificate of a fit's parameters: full data in memory, fresh subsets streamed."""
    subset = None
    if source is not None:
        rows = min(problem.layout.num_data, STREAMED_CERTIFICATE_ROWS)

        def subset(subset_key: jax.Array, on: Problem) -> Problem:
            seed = int(jax.random.randint(subset_key, (), 0, 2**31 - 1))
            index = np.random.default_rng(seed).integers(0, on.layout.num_data, rows)
            return restrict(on, source.rows(index))

    def certifier(params: VariationalParams, attempt: int) -> Certificate:
        return certify(
            jax.random.fold_in(key, attempt),
            params,
            problem,
            sticking_the_landing=sticking_the_landing,
            restrict=subset,
        )

    return certifier


def _warn_unconverged(fitted: Fit) -> None:
    certificate = fitted.certificate
    problems = [str(b) for b in certificate.unsettled()]
    if certificate.non_finite:
        problems.append(f"{certificate.non_finite} of {certificate.draws} gradient draws were NaN/inf")
    if fitted.num_skipped:
        problems.append(f"{fitted.num_skipped} of {fitted.num_steps} steps were skipped as non-finite")
    warnings.warn(
        f"avi.fit reached max_steps={fitted.num_steps} without certified convergence: "
        f"{'; '.join(problems) or 'no block is certified'}. Its posterior is not yet its "
        "family's optimum: raise max_steps, or change the learning rate (learning_rate=...); "
        "fit.certificate holds the evidence.",
        ConvergenceWarning,
        stacklevel=3,
    )
