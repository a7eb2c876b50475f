"""``avi.fit``: fit a NumPyro model with a variational family.

``avi.fit`` is orchestration: it prepares the data (:mod:`avi.data.prepare`), builds the problem
and the pure pair ``init``/``step`` (:mod:`avi.vi`), hands both to the runner
(:func:`avi.vi.run`), and wraps the end in a :class:`avi.Fit` (:mod:`avi.result`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avi.amortization_warning import warn_if_not_amortizable
from avi.data.boundary import convert_arguments
from avi.data.groups import GroupedModel, group_data
from avi.data.prepare import Prepared, prepare_in_memory, prepare_streamed
from avi.data.shard import data_mesh, gathered, num_strata, shard_rows, spans_processes
from avi.data.stream import BatchSource, is_streamed, streamed_length
from avi.errors import (
    AviError,
    ConvergenceWarning,
    DivergenceError,
    FamilyError,
    Interrupted,
    ModelError,
)
from avi.families import Family, as_family
from avi.model import Model
from avi.model.describe import describe_layout
from avi.model.control import latent_control_flow
from avi.options import (
    GuardedCallback,
    check_bool,
    check_callback,
    check_devices,
    check_seed,
    check_steps,
    check_tol,
    non_negative_int,
    positive_int,
)
from avi.result import Fit
from avi.structure import StructureReport, check, minibatch_refusal
from avi.vi import PlateauRule, fit_keys, run
from avi.vi.algorithm import default_optimizer, frozen_globals, restrict
from avi.vi.build import algorithm_for, whole_problem
from avi.vi.certify import Certificate, CurvatureCache, certify
from avi.vi.problem import Problem, VariationalParams
from avi.vi.checkpoint import Checkpointer, Progress, digest, read_checkpoint
from avi.vi.runner import Callback, Certifier, Run
from avi.vi.state import State

__all__ = ["fit"]


RAISE_ON_INTERRUPT: ContextVar[bool] = ContextVar("avi_raise_on_interrupt", default=False)
"""Inside :func:`interrupts_raise`, Ctrl-C during a fit raises :class:`avi.Interrupted` (with
the partial fit) instead of returning it: commands of many fits stop as a whole."""


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within this block an interrupted :func:`fit` raises :class:`avi.Interrupted` whose
    ``fits`` holds the partial fit under "interrupted" (``avi.compare``, ``avi sweep``, ``avi
    reproduce``: the next fit must not start)."""
    token = RAISE_ON_INTERRUPT.set(True)
    try:
        yield
    finally:
        RAISE_ON_INTERRUPT.reset(token)


DEFAULT_MAX_STEPS = 20_000
"""Cap on the steps of the stop rule when ``max_steps`` is not given."""

DEFAULT_TOL = 1e-4
"""The stop rule's threshold when ``tol`` is not given."""


def check_streamable(family: Family) -> None:
    """Streaming needs a family without per-datum tables and without Window inputs.

    Raises:
        FamilyError: F-VI or a Window encoder.
    """
    if family.table_keys:
        raise FamilyError(
            "F-VI keeps two parameters per datum and per coordinate in memory, which defeats "
            "streaming from a memory map; use avi.Amortized(encoder) or load the data."
        )
    if getattr(family, "inputs", None) is not None:
        raise FamilyError("A Window encoder needs neighbouring rows; it cannot stream yet.")


def _check_options(
    num_data: int,
    num_steps: int | None,
    max_steps: int,
    tol: float,
    batch_size: int | None,
    num_particles: int,
) -> None:
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
    check_tol(tol)


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
    max_steps: int | None = None,
    tol: float | None = None,
    batch_size: int | None = None,
    num_particles: int = 1,
    sticking_the_landing: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    anneal: bool | None = None,
    plate: str | None = None,
    groups: str | None = None,
    progress: bool = True,
    chunk_size: int = 100,
    callback: Callback | None = None,
    devices: Sequence[jax.Device] | None = None,
    init: VariationalParams | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_interval: float = 60.0,
    kl_warmup: int = 0,
    hold_globals: bool = False,
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
        max_steps: cap on the number of steps when the stop rule decides (default 20,000; not
            with ``num_steps``, which turns the stop rule off).
        tol: the stop rule's relative-change threshold (see :class:`avi.vi.PlateauRule`;
            default 1e-4; not with ``num_steps``).
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
        groups: for a grouped model (one local latent per group, the observations in another
            plate reaching it through an index argument; :mod:`avi.data.groups`), the name of
            that index argument where the structure leaves it ambiguous. Grouped models are
            recognised without it; their data plate is the group plate, minibatches are of
            groups, and amortized families read each group's rows with a set encoder.
        progress: show a progress bar with the running ELBO.
        chunk_size: steps per compiled chunk (and between stop-rule checks).
        callback: called after every chunk as ``callback(step, params, problem)``; a true
            return value stops the fit. Its time is excluded from ``wall_time`` and
            ``history.wall_time``.
        devices: devices to shard the data over (default: all, when they divide N).
        init: start from these variational parameters (e.g. another fit's).
        checkpoint: a file to keep the fit's full state in (:mod:`avi.vi.checkpoint`): written
            atomically every ``checkpoint_interval`` seconds, on Ctrl-C and at the end. When
            the file exists the fit resumes from it (``init`` is then ignored) and ends where
            the uninterrupted fit with the same seed and options would have; a checkpoint of
            another model, family, data or options is refused with the reason. A larger
            ``max_steps``/``num_steps`` continues a fit that ended on its budget.
        checkpoint_interval: seconds between checkpoint writes.
        hold_globals: hold q(theta) where it starts (``init``'s): only the local parameters
            move, and the certificate judges them alone (``avi.refine`` on new data).
        kl_warmup: KL warm-up over this many steps (default 0, off): step t maximises
            E_q[log p(x | theta, z)] + beta_t (E_q[log p(theta, z)] + H[q]) with beta_t =
            min(1, (t + 1) / kl_warmup), the ELBO from then on; the stop rule and the
            certificate wait for its end. For models whose decoder is flexible (a Bayesian
            neural network over theta, a VAE), where the full KL term early on pulls every
            local factor to its prior before the decoder can use it (posterior collapse;
            Bowman et al. 2016, Sonderby et al. 2016). It changes the path, not the optimum.
        **kwargs: the model's keyword arguments.

    Ctrl-C during the fit returns the fit of the last whole chunk of steps, with
    ``stop_reason == "interrupted"`` (and a ConvergenceWarning): it is not converged. A
    divergence (non-finite ELBOs or gradients in more than 10% of a chunk's steps) makes the
    fit return to its last finite state and lower the update scale tenfold, at most three
    times (``fit.history.backoff``); then :class:`avi.DivergenceError` is raised with the last
    finite fit as its ``fit``. Rarer non-finite steps are skipped and counted
    (``fit.num_skipped``, with a warning).

    Returns:
        The :class:`Fit`.
    """
    seed = check_seed(seed)
    check_steps(num_steps, max_steps, tol, anneal)
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else max_steps
    tol = DEFAULT_TOL if tol is None else tol
    progress = check_bool("progress", progress)
    sticking_the_landing = check_bool("sticking_the_landing", sticking_the_landing)
    if anneal is not None:
        anneal = check_bool("anneal", anneal)
    devices = check_devices(devices)
    check_callback(callback)
    guard = None if callback is None else GuardedCallback(callback)
    args, kwargs = convert_arguments(args, kwargs)
    if is_streamed(args, kwargs):
        if groups is not None:
            raise AviError("groups=...: grouped data cannot be streamed from a memory map yet.")
    else:
        model, args, kwargs, plate = group_data(model, args, kwargs, plate, groups)
    default_amortized = isinstance(family, str) and family.lower() == "amortized"
    report = None
    if default_amortized and not is_streamed(args, kwargs):
        report = warn_if_not_amortizable(model, args, kwargs, plate, family=as_family(family))
    family = as_family(family)
    chunk_size = positive_int("chunk_size", chunk_size)
    if is_streamed(args, kwargs):
        check_streamable(family)
        mesh = data_mesh(devices, streamed_length(args, kwargs))
        prepared = prepare_streamed(
            model, args, kwargs, plate, batch_size, chunk_size, seed, mesh
        )
    else:
        prepared = prepare_in_memory(
            model, args, kwargs, plate, bool(family.table_keys), batch_size, devices,
            rowwise=getattr(family, "inputs", None) is None,
        )
        if prepared.batch_size is not None:
            prepared = _unless_summarised(prepared, batch_size, report, plate)
        mesh = prepared.mesh
    layout = prepared.traced.layout
    _check_options(layout.num_data, num_steps, max_steps, tol, batch_size, num_particles)
    kl_warmup = non_negative_int("kl_warmup", kl_warmup)
    hold_globals = check_bool("hold_globals", hold_globals)
    if anneal is None:
        anneal = optimizer is None
    if hold_globals:
        optimizer = frozen_globals(optimizer if optimizer is not None else default_optimizer())
        if learning_rate is not None:
            raise AviError(
                "hold_globals=True with learning_rate: give the rate to an optimizer "
                "(optimizer=optax.adam(rate))."
            )
    algorithm = algorithm_for(
        prepared,
        family,
        optimizer,
        learning_rate,
        num_particles,
        sticking_the_landing,
        kl_warmup,
        num_strata(mesh, prepared.batch_size),
    )
    if mesh is not None:  # the data split before the start is computed on them
        algorithm = shard_rows(algorithm, layout.num_data, mesh)
    init_key, run_key, check_key = fit_keys(seed)
    params = None if init is None else _checked_init(init, algorithm.initial_params(init_key))
    with latent_control_flow():
        state = algorithm.init(init_key, params)
    checkpointer, resumed = None, None
    if checkpoint is not None and spans_processes(mesh):
        raise AviError(
            "checkpoint=...: a fit over several processes (jax.distributed) cannot be "
            "checkpointed yet (each process holds only its share of the state); fit without "
            "checkpoint=, or in one process."
        )
    if checkpoint is not None:
        checkpointer, state, resumed = _checkpointing(
            checkpoint, checkpoint_interval, state, prepared, model, family,
            (seed, num_particles, chunk_size, sticking_the_landing,
             "default" if optimizer is None else "user optimizer", learning_rate, tol, anneal,
             kl_warmup),
            int(num_steps) if num_steps is not None else int(max_steps),
        )
    if mesh is not None:
        state = shard_rows(state, layout.num_data, mesh)
    rule = PlateauRule(tol, stages=3 if anneal else 1) if num_steps is None else None
    certifier = _certifier(
        algorithm.problem,
        bool(sticking_the_landing),
        jax.random.fold_in(check_key, 1),
        prepared.source,
        hold_globals,
    )
    def as_fit(result: Run) -> Fit:
        problem = algorithm.problem
        if spans_processes(mesh):
            # Every process gets the whole result: the same fit everywhere, readable on the host.
            if result.certificate is None and result.reason != "interrupted":
                result = result._replace(certificate=certifier(result.state.params, 0, False))
            problem = whole_problem(prepared, family, problem)
            result = result._replace(state=gathered(result.state))
        return Fit(
            traced=prepared.traced,
            problem=problem,
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

    try:
        with latent_control_flow():
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
                callback=guard,
                checkpointer=checkpointer,
                resumed=resumed,
            )
    except DivergenceError as error:
        if error.run is not None:
            error.fit = as_fit(error.run)
        raise
    fitted = as_fit(result)
    if guard is not None:
        guard.raise_if_failed(fitted)
    if result.reason == "max_steps":
        _warn_unconverged(fitted)
    elif result.reason == "interrupted":
        where = f"; its checkpoint is {checkpointer.path}" if checkpointer is not None else ""
        if RAISE_ON_INTERRUPT.get():
            error = Interrupted(f"interrupted at step {fitted.num_steps}{where}")
            error.fits = {"interrupted": fitted}
            raise error
        warnings.warn(
            f"avi.fit was interrupted at step {fitted.num_steps}: the fit returned is the last "
            f"whole chunk's and is not converged{where}.",
            ConvergenceWarning,
            stacklevel=2,
        )
    elif fitted.num_skipped:
        warnings.warn(
            f"avi.fit skipped {fitted.num_skipped} of {fitted.num_steps} steps whose ELBO or "
            "gradient was NaN or inf (their updates were not applied).",
            ConvergenceWarning,
            stacklevel=2,
        )
    return fitted


def _checkpointing(
    path: str | Path,
    interval: float,
    state: State,
    prepared: Prepared,
    model: Model,
    family: Family,
    options: tuple[Any, ...],
    budget: int,
) -> tuple[Checkpointer, State, Progress | None]:
    """The checkpointer of this fit, and the state and record to resume from if ``path``
    holds this fit's checkpoint.

    Raises:
        AviError: streamed data (their minibatches are not reproducible on resumption), a bad
            interval, or a checkpoint of another fit.
    """
    if prepared.source is not None:
        raise AviError(
            "checkpoint=...: streamed data are read in an order a resumed fit cannot repeat; "
            "load the data into memory or fit without a checkpoint."
        )
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not interval > 0:
        raise AviError(f"checkpoint_interval={interval!r}: give a number of seconds > 0.")
    path = Path(path)
    if path.is_dir():
        raise AviError(f"checkpoint={str(path)!r} is a folder; give a file path.")
    user_model = model.model if isinstance(model, GroupedModel) else model
    fingerprint = {
        "model": getattr(user_model, "__qualname__", "?"),  # not the module: the CLI renames it
        "sites": json.dumps(describe_layout(prepared.traced), sort_keys=True, default=str),
        "family": repr(family),
        "data": digest(prepared.args, prepared.kwargs),
        "batch_size": prepared.batch_size,
        "options": repr(options),
    }
    checkpointer = Checkpointer(path, interval, fingerprint)
    if not path.exists():
        return checkpointer, state, None
    state, resumed = read_checkpoint(path, state, fingerprint)
    if resumed.reason in ("max_steps", "num_steps") and int(state.step) < budget:
        resumed = resumed._replace(reason=None)  # a larger budget goes on
    return checkpointer, state, resumed


def _unless_summarised(
    prepared: Prepared, batch_size: int | None, report: StructureReport | None, plate: str | None
) -> Prepared:
    """Minibatches only for a model that computes no summary of all its data (a mean or sd
    computed inside the model would be the minibatch's: another model's ELBO).

    Raises:
        ModelError: ``batch_size`` was given and the model summarises its data; the automatic
            choice falls back to the full batch instead.
    """
    traced = prepared.traced
    if report is None:
        report = check(traced.model, *prepared.args, plate=plate, **prepared.kwargs)
    reason = minibatch_refusal(report)
    if reason is None:
        return prepared
    if batch_size is not None:
        raise ModelError(f"batch_size={batch_size}: {reason}")
    return dataclasses.replace(prepared, batch_size=None)


STREAMED_CERTIFICATE_ROWS = 65_536
"""Rows of streamed data each certificate group reads (a fresh uniform subset per group)."""


def _certifier(
    problem: Problem,
    sticking_the_landing: bool,
    key: jax.Array,
    source: BatchSource | None,
    hold_globals: bool = False,
) -> Certifier:
    """The certificate of a fit's parameters: full data in memory, fresh subsets streamed."""
    subset = None
    if source is not None:
        rows = min(problem.layout.num_data, STREAMED_CERTIFICATE_ROWS)

        def subset(subset_key: jax.Array, on: Problem) -> Problem:
            seed = int(jax.random.randint(subset_key, (), 0, 2**31 - 1))
            return restrict(on, source.sample(np.random.default_rng(seed), rows))

    curvatures = CurvatureCache()

    def certifier(params: VariationalParams, attempt: int, provisional: bool) -> Certificate:
        return certify(
            jax.random.fold_in(key, attempt),
            params,
            problem,
            sticking_the_landing=sticking_the_landing,
            restrict=subset,
            hold_globals=hold_globals,
            curvatures=curvatures,
            provisional=provisional,
        )

    return certifier


def _warn_unconverged(fitted: Fit) -> None:
    certificate = fitted.certificate
    problems = [str(b) for b in certificate.unsettled()]
    if certificate.non_finite:
        problems.append(
            f"{certificate.non_finite} of {certificate.draws} gradient draws were NaN/inf"
        )
    if fitted.num_skipped:
        problems.append(
            f"{fitted.num_skipped} of {fitted.num_steps} steps were skipped as non-finite"
        )
    warnings.warn(
        f"avi.fit reached max_steps={fitted.num_steps} without certified convergence: "
        f"{'; '.join(problems) or 'no block is certified'}. Its posterior is not yet its "
        "family's optimum: raise max_steps, or change the learning rate (learning_rate=...); "
        "fit.certificate holds the evidence.",
        ConvergenceWarning,
        stacklevel=3,
    )
