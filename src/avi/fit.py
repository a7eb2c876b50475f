"""``avi.fit``: fit a NumPyro model with a variational family, and the :class:`Fit` it returns."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from numpyro.distributions.transforms import biject_to
from tqdm import tqdm

from avi.amortization_warning import warn_if_not_amortizable
from avi.elbo import Problem, VariationalParams, elbo_draws
from avi.encoders import INIT_LOG_SCALE
from avi.errors import AviError, DivergenceError, FamilyError, ModelError
from avi.families import Family, as_family, count_parameters
from avi.model import (
    Model,
    SiteLayout,
    TracedModel,
    check_minibatchable,
    per_datum_features,
    trace_model,
    validate_arguments,
)
from avi.parallel import data_mesh, shard_rows
from avi.stream import (
    TRACE_ROWS,
    BatchSource,
    check_streamable,
    is_streamed,
    prefix,
    streamed_length,
)
from avi.optim import (
    OptState,
    batch_problem,
    StepSettings,
    StopRule,
    default_optimizer,
    evaluate,
    evaluation_index,
    init_state,
    run_chunk,
)


Callback = Callable[[int, VariationalParams, Problem], bool | None]


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error."""

    mean: float
    stderr: float

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.stderr:.2f}"


class History(NamedTuple):
    """Per checkpoint (end of each chunk): step, mean ELBO estimate of the chunk, wall time (s)."""

    step: np.ndarray
    elbo: np.ndarray
    wall_time: np.ndarray


@dataclass(frozen=True)
class FeatureScaling:
    """Standardization of the encoder's input, fixed from the training data."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureScaling:
        std = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(std > 0, std, 1.0))

    def apply(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std).astype(np.float32)


@dataclass
class Fit:
    """A fitted variational approximation.

    Attributes:
        family: the variational family of the local latents.
        params: the variational parameters (unconstrained space).
        history: ELBO estimates per checkpoint.
        converged: whether the stop rule fired before ``max_steps`` (False with ``num_steps``).
        num_steps: optimisation steps taken.
        wall_time: seconds spent in optimisation, compilation included.
    """

    traced: TracedModel
    problem: Problem
    family: Family
    params: VariationalParams
    history: History
    converged: bool
    num_steps: int
    wall_time: float
    scaling: FeatureScaling
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    streamed: bool = False

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
        """Per-draw full-data ELBO estimates, computed in groups that bound memory."""
        self._check_in_memory("full-data ELBO draws")
        layout = self.traced.layout
        group = max(
            1, min(num_particles, int(2e7 // max(1, layout.num_data * max(1, layout.local_dim))))
        )
        keys = jax.random.split(jax.random.PRNGKey(seed), math.ceil(num_particles / group))
        draws = [np.asarray(_full_data_draws(k, self.params, self.problem, group)) for k in keys]
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
    optimizer: Any,
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
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise AviError(
            f"optimizer={optimizer!r} is not an optax GradientTransformation; "
            "give e.g. optax.adam(1e-2)."
        )


AUTO_FULL_BATCH_LIMIT = 8192
"""Up to this many data, the default is full-batch optimisation."""

AUTO_BATCH_SIZE = 1024
"""Default batch of encoder-based families beyond AUTO_FULL_BATCH_LIMIT data."""


def settings_batch_size(batch_size: int | None, num_data: int, family: Family) -> int | None:
    """The batch size a step uses; None means the full batch.

    ``batch_size=None`` chooses: the full batch for F-VI (each of its factors learns only from
    its own datum, so a minibatch of B updates a fraction B/N of them per step and needs N/B
    times more steps) and for N <= AUTO_FULL_BATCH_LIMIT; otherwise AUTO_BATCH_SIZE, with
    which A-VI's per-step cost no longer grows with N.
    """
    if batch_size is None:
        if family.table_keys or num_data <= AUTO_FULL_BATCH_LIMIT:
            return None
        return AUTO_BATCH_SIZE
    return None if batch_size == num_data else int(batch_size)


@dataclass(frozen=True)
class _Prepared:
    """A traced model with its compiled-problem inputs and, for streamed data, the source."""

    traced: TracedModel
    problem: Problem
    scaling: FeatureScaling
    batch_size: int | None
    source: BatchSource | None


def _device_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]):
    as_device = lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    return tuple(as_device(a) for a in args), {k: as_device(a) for k, a in kwargs.items()}


def _prepare_in_memory(
    model, args, kwargs, plate, family, batch_size, chunk_size, seed
) -> _Prepared:
    """Trace on all data; per-datum data and features live on the device."""
    traced = trace_model(model, args, kwargs, plate=plate)
    layout = traced.layout
    step_batch_size = settings_batch_size(batch_size, layout.num_data, family)
    if step_batch_size is not None:
        try:
            check_minibatchable(traced)
        except ModelError:
            if batch_size is not None:
                raise
            step_batch_size = None  # the automatic choice falls back to the full batch
    raw_features = per_datum_features(traced, args, kwargs)
    scaling = FeatureScaling.from_features(raw_features)
    device_args, device_kwargs = _device_arguments(args, kwargs)
    problem = Problem(
        model,
        layout,
        family,
        device_args,
        device_kwargs,
        family.prepare(scaling.apply(raw_features)),
    )
    return _Prepared(traced, problem, scaling, step_batch_size, None)


def _prepare_streamed(
    model, args, kwargs, plate, family, batch_size, chunk_size, seed
) -> _Prepared:
    """Trace on a prefix of memory-mapped data; minibatches are read from the map per chunk."""
    num_data = streamed_length(args, kwargs)
    validate_arguments(args, kwargs)
    args_prefix, kwargs_prefix = prefix(args, kwargs, num_data, TRACE_ROWS)
    on_prefix = trace_model(model, args_prefix, kwargs_prefix, plate=plate)
    check_streamable(on_prefix, family, args_prefix)
    check_minibatchable(on_prefix)
    prefix_features = per_datum_features(on_prefix, args_prefix, kwargs_prefix)
    layout = dataclasses.replace(on_prefix.layout, num_data=num_data)
    traced = dataclasses.replace(on_prefix, layout=layout)
    step_batch_size = settings_batch_size(batch_size, num_data, family) or min(
        num_data, AUTO_BATCH_SIZE
    )
    source = BatchSource(layout, args, kwargs, step_batch_size, chunk_size, seed)
    scaling = FeatureScaling(source.mean, source.std)
    device_args, device_kwargs = _device_arguments(args_prefix, kwargs_prefix)
    local_data = family.prepare(scaling.apply(prefix_features))
    problem = Problem(model, layout, family, device_args, device_kwargs, local_data)
    return _Prepared(traced, problem, scaling, step_batch_size, source)


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


def _initial_params(
    key: jax.Array, traced: TracedModel, family: Family, problem: Problem
) -> VariationalParams:
    layout = traced.layout
    return VariationalParams(
        global_loc=jnp.zeros(layout.global_dim),
        global_log_scale=jnp.full(layout.global_dim, INIT_LOG_SCALE),
        local=family.init(key, problem.local_data, layout.local_dim),
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
        tol: the stop rule's relative-change threshold (see :class:`avi.optim.StopRule`).
        batch_size: data per step; None chooses (see :func:`settings_batch_size`): the full
            batch for F-VI or N <= 8192, else 1024.
        num_particles: Monte Carlo draws per step.
        sticking_the_landing: use the sticking-the-landing gradient estimator (Roeder et al.
            2017; unbiased, and its variance vanishes as q approaches the posterior).
        optimizer: any optax GradientTransformation (default Adam, learning rate 1e-2).
        anneal: with the stop rule, divide the learning rate by 10 each time the ELBO goes
            flat, twice, before declaring convergence (default: on for the default optimizer,
            off for a user's, whose schedule is kept as given).
        plate: name of the data plate when the automatic choice must be overridden.
        progress: show a progress bar with the running ELBO.
        chunk_size: steps per compiled chunk (and between stop-rule checks).
        callback: called after every chunk as ``callback(step, params, problem)``; a true
            return value stops the fit. Its time is excluded from ``wall_time`` and ``history.wall_time``.
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
    prepare = _prepare_streamed if is_streamed(args, kwargs) else _prepare_in_memory
    prepared = prepare(model, args, kwargs, plate, family, batch_size, chunk_size, seed)
    traced, problem, scaling = prepared.traced, prepared.problem, prepared.scaling
    layout = traced.layout
    _check_options(layout.num_data, num_steps, max_steps, tol, batch_size, num_particles, optimizer)
    step_batch_size = prepared.batch_size
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    params = _initial_params(init_key, traced, family, problem)
    if init is not None:
        params = _checked_init(init, params)
    mesh = data_mesh(devices, layout.num_data)
    if mesh is not None:
        problem = shard_rows(problem, layout.num_data, mesh)
        params = shard_rows(params, layout.num_data, mesh)
    settings = StepSettings(
        batch_size=step_batch_size,
        num_particles=int(num_particles),
        sticking_the_landing=bool(sticking_the_landing),
        chunk_size=int(chunk_size),
    )
    total = int(num_steps) if num_steps is not None else int(max_steps)
    if anneal is None:
        anneal = optimizer is None
    stop_rule = StopRule(tol, stages=3 if anneal else 1) if num_steps is None else None
    optimizer = optimizer if optimizer is not None else default_optimizer()
    state, history, converged, wall_time = _optimise(
        problem,
        optimizer,
        settings,
        params,
        run_key,
        total,
        stop_rule,
        progress,
        callback,
        prepared.source,
    )
    return Fit(
        traced=traced,
        problem=problem,
        family=family,
        params=state.params,
        history=history,
        converged=converged,
        num_steps=int(state.step),
        wall_time=wall_time,
        scaling=scaling,
        args=tuple(args),
        kwargs=dict(kwargs),
        streamed=prepared.source is not None,
    )


def _optimise(
    problem: Problem,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
    params: VariationalParams,
    key: jax.Array,
    total: int,
    stop_rule: StopRule | None,
    progress: bool,
    callback: Callback | None,
    source: BatchSource | None,
) -> tuple[OptState, History, bool, float]:
    state = init_state(params, optimizer, problem.family.table_keys)
    key, check_key, subset_key = jax.random.split(key, 3)
    check_problem, check_index = problem, None
    if stop_rule is not None and source is not None:
        subset = np.random.default_rng(int(jax.random.randint(subset_key, (), 0, 2**31 - 1)))
        rows = subset.integers(0, problem.layout.num_data, 16 * source.batch_size)
        check_problem = batch_problem(problem, source.rows(rows))
    elif stop_rule is not None:
        check_index = evaluation_index(subset_key, problem.layout.num_data, settings.batch_size)
    next_batches = source.chunk() if source is not None else None
    paused = 0.0
    total_steps = jnp.asarray(total, jnp.int32)
    steps, elbos, times = [], [], []
    converged = False
    start = time.perf_counter()
    with tqdm(total=total, disable=not progress, desc=problem.family.name, unit="step") as bar:
        done = 0
        while done < total:
            key, chunk_key = jax.random.split(key)
            scale = jnp.asarray(stop_rule.learning_rate_scale if stop_rule else 1.0, jnp.float32)
            batches = next_batches
            state, info = run_chunk(
                problem, optimizer, settings, total_steps, scale, state, chunk_key, batches
            )
            if source is not None:  # read the next chunk while the device works on this one
                next_batches = source.chunk()
            taken = min(settings.chunk_size, total - done)
            done += taken
            chunk_elbo = np.asarray(info.elbo)[:taken]
            finite = np.asarray(info.finite)[:taken]
            if not finite.any():
                raise DivergenceError(
                    f"Every ELBO or gradient in steps {done - taken}..{done} was NaN or inf. "
                    "Lower the learning rate (optimizer=optax.adam(1e-3)), add draws "
                    "(num_particles), or check priors whose support the model leaves."
                )
            mean_elbo = float(np.mean(chunk_elbo[finite]))
            steps.append(done)
            elbos.append(mean_elbo)
            times.append(time.perf_counter() - start - paused)
            bar.update(taken)
            bar.set_postfix(elbo=f"{mean_elbo:.4g}")
            if stop_rule is not None and stop_rule.update(
                float(evaluate(check_key, state.params, check_problem, check_index))
            ):
                converged = True
                break
            if callback is not None:
                callback_start = time.perf_counter()
                stop = callback(done, state.params, problem)
                paused += time.perf_counter() - callback_start
                if stop:
                    break
    history = History(np.asarray(steps), np.asarray(elbos), np.asarray(times))
    return state, history, converged, time.perf_counter() - start - paused
