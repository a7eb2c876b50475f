"""The runner: compiled chunks of steps, the stop rule between them, progress and the callback.

Every chunk is one call of a compiled ``lax.scan`` over ``chunk_size`` steps of
:meth:`avi.vi.Algorithm.step`; steps past the requested count are masked, so every chunk has
the same length and the program compiles once per fit shape (``equinox.filter_jit`` caches it
across fits of the same model, family, optimizer and data shapes). The Python loop between
chunks feeds streamed minibatches, applies the stop rule to a fixed-noise ELBO, asks the
convergence certificate when the rule fires, keeps the iterate average after its first
refusal, reports progress and calls the user's callback.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from avi.data.batch import Batch, StreamedRows, draw_batch
from avi.data.shard import host_arrays
from avi.data.stream import BatchSource
from avi.errors import DivergenceError
from avi.vi.algorithm import Algorithm, restrict, step_keys
from avi.vi.certify import Certificate, apply_natural_step
from avi.vi.checkpoint import Checkpointer, Progress
from avi.vi.elbo import EVALUATION_DRAWS, elbo_values
from avi.vi.problem import Problem, VariationalParams
from avi.vi.state import Info, State
from avi.vi.stop import PlateauRule

Callback = Callable[[int, VariationalParams, Problem], bool | None]
"""``callback(step, params, problem)`` after every chunk; a true return value stops the fit."""

Certifier = Callable[[VariationalParams, int, bool], Certificate]
"""``certifier(params, attempt, provisional)``: the convergence certificate of ``params`` (its
draws keyed by the attempt number); a provisional one may stop at its first refused block
(:func:`avi.vi.certify`), the runner's when the rule fires; the one a fit ends with is not."""

BACKOFF_FRACTION = 0.1
"""A chunk with more than this fraction of non-finite steps is a divergence: the runner backs
off (returns to the chunk's start and lowers the update scale). Rarer non-finite steps are
skipped (their update is not applied) and counted in ``State.skipped``."""

BACKOFF_FACTOR = 0.1
"""Factor of the update scale at each back-off."""

MAX_BACKOFFS = 3
"""Back-offs before the runner gives up with a :class:`avi.DivergenceError`."""

DRAWS_AFTER_REFUSAL = 4
"""Factor of the draws per step once a certificate has refused the fit (see :func:`averaging`)."""

CERTIFY_GROWTH = 1.5
"""After a certificate refused the fit at step k, the next is asked no earlier than step
1.5 k, however soon the rule fires again. A certificate costs hundreds of full-data gradients
(and, for an encoder, its curvature): asked at every plateau it can cost more than the steps
(nine refusals, 27 of 38 s of the first default amortized fit of the linear model at N = 10^4).
With geometric spacing a fit takes at most 1.5 times the steps it needed, plus a number of
certificates logarithmic in them; the spacing counts steps, not seconds, so a fit is the same
on every machine."""


NATURAL_STEPS = 3
"""Natural-gradient steps of q(theta) the runner may take after a certificate refuses q(theta),
each certified anew and kept while it lowers q(theta)'s gain beyond its noise. For a Gaussian
target one step from precise gradients is CAVI's update of q(theta) given the local factors,
exact; a step clipped to its trust region (:data:`avi.vi.certify.TRUST_LOC`), or one from
noisy gradients, leaves some of the gain, which the next step takes. Linear model at
N = 10^6: Adam's iterates at the smallest rate sat 1-3 nats from q(theta)'s optimum; one step
left 0.05 nats, twenty times its tolerance, and the steps of Adam that followed undid it."""


class History(NamedTuple):
    """Per chunk: step, mean ELBO estimate of the chunk's steps, wall time (s); and the steps
    at which the runner backed off from a divergence (:func:`run`)."""

    step: np.ndarray
    elbo: np.ndarray
    wall_time: np.ndarray
    backoff: np.ndarray = np.zeros(0, np.int64)


class Run(NamedTuple):
    """What the runner returns.

    Attributes:
        state: the final state.
        history: ELBO per chunk.
        wall_time: seconds of optimisation (compilation included, callback time excluded).
        reason: why it stopped: "converged", "num_steps", "max_steps", "callback" or
            "interrupted" (Ctrl-C: the state of the last whole chunk).
        certificate: the last certificate computed (None if none was asked for).
    """

    state: State
    history: History
    wall_time: float
    reason: str
    certificate: Certificate | None


def _candidate(state: State) -> VariationalParams:
    """What the certificate judges and the fit returns: the iterate average once there is one
    (in the noise-dominated regime where it starts it is the better estimate of the optimum,
    and a fixed-noise ELBO of a few draws cannot tell the two apart reliably), else the last
    iterate."""
    return state.params if state.average is None else state.average


def _globals_unsettled(certificate: Certificate) -> bool:
    return any(b.name == "globals" and not b.certified for b in certificate.blocks)


def _globals_lowered(stepped: Certificate, before: Certificate, strictly: bool) -> bool:
    """Whether q(theta)'s gain is lower in ``stepped`` than ``before``: ``strictly``, by more
    than twice the difference's standard error, else on the point estimates.

    The first natural step after a refusal is kept on the point estimates: at the start of a
    fit q(theta)'s gain is large and noisy (Poisson random intercepts at N = 10^5: 13 +- 4.6
    nats from 64 draws), and with every step kept only when significantly better two of
    three fits (seeds 0-2) ran to max_steps uncertified, none with this rule. Steps chained
    on it must be significantly better: each is one more chance to keep a step on noise
    (eight schools: gains of 0.71 +- 0.012 and 0.707 +- 0.34 nats in a row)."""
    if stepped.non_finite or before.non_finite:
        return False
    (new,) = [b for b in stepped.blocks if b.name == "globals"]
    (old,) = [b for b in before.blocks if b.name == "globals"]
    margin = 2 * math.hypot(old.stderr, new.stderr) if strictly else 0.0
    return old.gain - new.gain > margin


def _run_chunk(
    algorithm: Algorithm,
    state: State,
    key: jax.Array,
    total: jax.Array,
    streamed: StreamedRows | None,
    chunk_size: int,
) -> tuple[State, Info]:
    assert state.average is None, "the iterate average stays outside the compiled steps"
    arrays, static = eqx.partition(state, eqx.is_array)

    def body(carry: State, rows: StreamedRows | None) -> tuple[State, Info]:
        current = eqx.combine(carry, static)
        batch_key, draw_key = step_keys(key, current.step)
        batch = algorithm.draw_batch(batch_key) if rows is None else Batch(rows=rows)
        new, info = algorithm.step(draw_key, current, batch)
        active = current.step < total
        new_arrays = jax.tree_util.tree_map(
            lambda n, o: jnp.where(active, n, o), eqx.filter(new, eqx.is_array), carry
        )
        return new_arrays, info

    arrays, info = jax.lax.scan(body, arrays, streamed, length=chunk_size)
    return eqx.combine(arrays, static), info


run_chunk = eqx.filter_jit(_run_chunk)
"""``run_chunk(algorithm, state, key, total, streamed, chunk_size)``: ``chunk_size`` steps in one
compiled program; ``streamed`` stacks one :class:`avi.data.batch.StreamedRows` per step (or None).
The state's iterate average must be taken out first (:func:`run` carries it around the
program: the steps never read it, and a copy per step would cost O(N) for per-datum tables)."""


def _accumulate(average: VariationalParams, params: VariationalParams, weight: jax.Array):
    arrays, static = eqx.partition(average, eqx.is_inexact_array)
    new = eqx.filter(params, eqx.is_inexact_array)
    mean = jax.tree_util.tree_map(lambda a, p: a + weight * (p - a), arrays, new)
    return eqx.combine(mean, static)


accumulate = eqx.filter_jit(_accumulate)

AVERAGING_DECAY = 1.0
"""eta of the polynomial-decay average: the k-th chunk end enters with weight
(eta + 1) / (k + eta)."""


def add_to_average(state: State) -> State:
    """``state`` with one more chunk end, ``state.params``, in its iterate average.

    Stochastic steps at a fixed rate jitter around the optimum with a spread that the rate
    sets; an average of the jittering iterates converges to it at the Monte Carlo rate 1/k,
    which annealing the rate alone does not reach in a fixed budget (Polyak and Juditsky
    1992). The polynomial-decay average bar-lambda_k = bar-lambda_{k-1} + (eta + 1) /
    (k + eta) (lambda_k - bar-lambda_{k-1}) (Shamir and Zhang 2013) forgets the iterates of
    the start, still drifting, as k^-(eta + 1) where the plain mean forgets them as 1/k.
    """
    if state.average is None:
        return state._replace(average=state.params, averaged=1)
    count = state.averaged + 1
    weight = (AVERAGING_DECAY + 1) / (count + AVERAGING_DECAY)
    average = accumulate(state.average, state.params, jnp.asarray(weight, jnp.float32))
    return state._replace(average=average, averaged=count)


def averaging(algorithm: Algorithm) -> Algorithm:
    """The step of the averaging phase: ``DRAWS_AFTER_REFUSAL`` times the draws per step.

    A refusal at the smallest update scale means the iterates jitter around the optimum with a
    spread the gradient noise sets; their average (:func:`add_to_average`) then loses to the
    optimum about as 1 / (steps x draws per step). More draws per step buy that precision in
    fewer steps (the noise, not the rate, limits it: Smith et al. 2018 trade a rate decay for a
    larger batch the same way), at the cost of one more compiled program per refused fit; fits
    certified at their first plateau never take it.
    """
    settings = algorithm.settings
    more = dataclasses.replace(settings, num_particles=settings.num_particles * DRAWS_AFTER_REFUSAL)
    return dataclasses.replace(algorithm, settings=more)


def family_label(family: Any) -> str:
    """A short name of a family for the progress bar: "factorized", "amortized MLP(32)",
    "amortized Polynomial(1) given globals", with the factor when not the diagonal Gaussian."""
    label = family.name
    encoder = getattr(family, "encoder", None)
    if encoder is not None:
        if hasattr(encoder, "width"):
            label += f" MLP({encoder.width})"
        elif hasattr(encoder, "degree"):
            label += f" Polynomial({encoder.degree})"
        else:
            label += f" {type(encoder).__name__}"
    factor = getattr(family, "factor", None)
    if factor is not None and type(factor).__name__ != "Diagonal":
        label += f" {type(factor).__name__}"
    if getattr(family, "given_globals", False):
        label += " given globals"
    return label


def _final_line(bar: tqdm, done: int, reason: str, ruled: bool) -> None:
    """End the bar on what happened: its total becomes the steps taken (a fit certified early
    does not end at "10%"), its description says why it stopped."""
    if bar.disable:
        return
    ending = {
        "converged": f"certified at step {done}",
        "max_steps": "stopped at max_steps, not certified",
        "callback": "stopped by the callback",
        "num_steps": f"{done} steps",
    }.get(reason, reason)
    if reason == "max_steps" and not ruled:
        ending = f"{done} steps"
    bar.total = done
    bar.set_description(f"{bar.desc.split(':')[0]}: {ending}")
    bar.refresh()


def evaluation_index(
    key: jax.Array, num_data: int, batch_size: int | None, strata: int = 1
) -> jax.Array | None:
    """The fixed data on which the stop rule evaluates the ELBO: all data in full-batch mode,
    else 16 B data drawn once, uniformly with replacement (O(B) work whatever N is), stratified
    over the devices that hold the data like the steps' batches."""
    if batch_size is None or 16 * batch_size >= num_data:
        return None
    return draw_batch(key, num_data, 16 * batch_size, strata).index


def evaluate(
    key: jax.Array, params: VariationalParams, problem: Problem, index: jax.Array | None
) -> float:
    """The ELBO at fixed noise (the same key every check): the mean of
    :data:`avi.vi.elbo.EVALUATION_DRAWS` draws."""
    values = elbo_values(key, params, problem, index, EVALUATION_DRAWS, False)
    return float(np.mean(host_arrays(values)))


def _evaluation_target(
    algorithm: Algorithm, key: jax.Array, source: BatchSource | None
) -> tuple[Problem, jax.Array | None]:
    """The problem and rows on which every check evaluates the ELBO."""
    problem = algorithm.problem
    if source is None:
        settings = algorithm.settings
        return problem, evaluation_index(
            key, problem.layout.num_data, settings.batch_size, settings.strata
        )
    subset = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    return restrict(problem, source.sample(subset, 16 * source.batch_size)), None


def run(
    algorithm: Algorithm,
    state: State,
    key: jax.Array,
    num_steps: int,
    *,
    chunk_size: int = 100,
    rule: PlateauRule | None = None,
    check_key: jax.Array | None = None,
    certifier: Certifier | None = None,
    source: BatchSource | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    checkpointer: Checkpointer | None = None,
    resumed: Progress | None = None,
) -> Run:
    """Run steps from ``state`` until ``state.step == num_steps``, the rule fires, the
    callback stops or the user interrupts (Ctrl-C).

    Args:
        algorithm: the step.
        state: where to start (``algorithm.init(key)`` or a saved state).
        key: the fit's run key; step k uses :func:`avi.vi.step_keys` ``(key, k)``.
        num_steps: total steps (counted from step 0, so a resumed state runs the rest).
        chunk_size: steps per compiled chunk, and between checks of the rule.
        rule: the stop rule; None runs exactly ``num_steps``.
        check_key: key of the rule's fixed-noise evaluations (required with a rule).
        certifier: asked when the rule fires (after a refusal at step k, not before step
            :data:`CERTIFY_GROWTH` k); the run stops only on a certificate, and a refusal
            reopens the rule (:meth:`PlateauRule.reopen`) and, the first time, starts the
            iterate average (:func:`add_to_average`), which from then on is what is certified
            and returned, and the steps take more draws (:func:`averaging`). A run with a rule
            that ends otherwise is certified once more at its end, and counts as converged if
            that certificate certifies it. None: the rule alone decides.
        source: minibatches of streamed data, or None for in-memory data.
        progress: show a progress bar with the running ELBO.
        callback: see :data:`Callback`; its time is excluded from the wall times.
        checkpointer: writes the state and this record at chunk ends when due, on
            interruption and at the end (:mod:`avi.vi.checkpoint`).
        resumed: the record of a checkpoint ``state`` comes from; a finished one is returned
            as it was.

    Divergence. A chunk with more than ``BACKOFF_FRACTION`` non-finite steps is undone: the
    run returns to the chunk's start (the last finite state), multiplies the update scale by
    ``BACKOFF_FACTOR`` and goes on, recording the step in ``History.backoff``; after
    ``MAX_BACKOFFS`` back-offs it raises.

    Raises:
        DivergenceError: divergence after ``MAX_BACKOFFS`` back-offs; its ``run`` attribute
            holds the last finite state with the history.
    """
    record = resumed or Progress()
    steps, elbos, times = list(record.steps), list(record.elbos), list(record.times)
    backoffs = list(record.backoffs)
    attempts, certified_at = record.attempts, record.certified_at
    certificate = None
    if record.reason is not None:  # a finished fit's checkpoint
        history = History(*map(np.asarray, (steps, elbos, times)), np.asarray(backoffs, np.int64))
        return Run(state, history, record.wall_time, record.reason, None)
    if rule is not None:
        check_problem, check_index = _evaluation_target(algorithm, check_key, source)
    total = jnp.asarray(num_steps, jnp.int32)
    next_rows = source.chunk() if source is not None else None
    done = int(state.step)
    paused = 0.0
    reason = "max_steps" if rule is not None else "num_steps"
    start = time.perf_counter() - record.wall_time

    def snapshot(ending: str | None = None) -> Progress:
        return Progress(
            tuple(steps), tuple(elbos), tuple(times), tuple(backoffs), attempts, certified_at,
            time.perf_counter() - start - paused, ending,
        )

    def history() -> History:
        return History(
            np.asarray(steps), np.asarray(elbos), np.asarray(times), np.asarray(backoffs, np.int64)
        )

    stepper = algorithm if state.average is None else averaging(algorithm)
    committed = (state, done, len(steps), attempts, certified_at, certificate)
    try:
        with tqdm(
            total=num_steps,
            initial=done,
            disable=not progress,
            desc=family_label(algorithm.problem.family),
            unit="step",
        ) as bar:
            while done < num_steps:
                before = state
                rows = next_rows
                running = state._replace(average=None, averaged=0)
                running, info = run_chunk(stepper, running, key, total, rows, chunk_size)
                state = running._replace(average=state.average, averaged=state.averaged)
                if source is not None:  # read the next chunk while the device works on this one
                    next_rows = source.chunk()
                taken = min(chunk_size, num_steps - done)
                chunk_elbo = np.asarray(info.elbo)[:taken]
                finite = np.asarray(info.finite)[:taken]
                if np.mean(~finite) > BACKOFF_FRACTION:
                    if len(backoffs) >= MAX_BACKOFFS:
                        error = DivergenceError(
                            f"Steps {done}..{done + taken}: {int((~finite).sum())} of {taken} "
                            f"ELBOs or gradients were NaN or inf, after {len(backoffs)} back-offs "
                            "(each returned to the last finite state and divided the update scale "
                            "by 10). Lower the learning rate (optimizer=optax.adam(1e-3)), add "
                            "draws (num_particles), or check priors whose support the model "
                            "leaves. The error's `fit` holds the last finite fit."
                        )
                        error.run = Run(before, history(), time.perf_counter() - start - paused,
                                        "diverged", None)
                        raise error
                    backoffs.append(done)
                    stop = before.stop._replace(scale=before.stop.scale * BACKOFF_FACTOR)
                    state = before._replace(stop=stop)
                    continue
                done += taken
                mean_elbo = float(np.mean(chunk_elbo[finite]))
                steps.append(done)
                elbos.append(mean_elbo)
                times.append(time.perf_counter() - start - paused)
                bar.update(taken)
                bar.set_postfix(elbo=f"{mean_elbo:.4g}")
                if rule is not None and done >= algorithm.settings.kl_warmup:
                    value = evaluate(check_key, state.params, check_problem, check_index)
                    state = state._replace(stop=rule.update(state.stop, value))
                    if state.average is not None:
                        state = add_to_average(state)
                    if bool(state.stop.converged) and done >= CERTIFY_GROWTH * certified_at:
                        if certifier is None:
                            reason = "converged"
                            break
                        candidate = _candidate(state)
                        certificate, certified_at = certifier(candidate, attempts, True), done
                        attempts += 1
                        # Adam's stationary jitter on q(theta): take natural-gradient steps of
                        # the averaged gradient, each certified anew, while one certifies the
                        # fit or lowers q(theta)'s gain beyond its noise (not the total: an
                        # encoder's gain of nats varies between certificates by more than
                        # q(theta)'s tolerance).
                        for chained in range(NATURAL_STEPS):
                            if not (
                                _globals_unsettled(certificate)
                                and certificate.natural_step is not None
                            ):
                                break
                            params = apply_natural_step(candidate, certificate.natural_step)
                            stepped = certifier(params, attempts, True)
                            attempts += 1
                            if not (
                                stepped.certified
                                or _globals_lowered(stepped, certificate, strictly=bool(chained))
                            ):
                                break
                            certificate, candidate = stepped, params
                            average = None if state.average is None else params
                            state = state._replace(params=params, average=average)
                        if certificate.certified:
                            state = state._replace(params=candidate)
                            reason = "converged"
                            break
                        # Refused at the smallest rate: the iterates jitter around the optimum
                        # (or still drift): average them from here on, and step back one stage.
                        state = state._replace(stop=rule.reopen(state.stop))
                        if state.average is None:
                            state = add_to_average(state)
                            stepper = averaging(algorithm)
                if callback is not None:
                    callback_start = time.perf_counter()
                    stop = callback(done, state.params, algorithm.problem)
                    paused += time.perf_counter() - callback_start
                    if stop:
                        reason = "callback"
                        break
                committed = (state, done, len(steps), attempts, certified_at, certificate)
                if checkpointer is not None and checkpointer.due():
                    checkpointer.write(state, snapshot())
            if rule is not None and reason != "converged":
                state = state._replace(params=_candidate(state))
                if certifier is not None:  # every block decided, not the provisional verdict
                    certificate = certifier(state.params, attempts, False)
                if reason == "max_steps" and certificate is not None and certificate.certified:
                    reason = "converged"
            _final_line(bar, done, reason, rule is not None)
    except KeyboardInterrupt:
        state, done, kept, attempts, certified_at, certificate = committed
        del steps[kept:], elbos[kept:], times[kept:]
        if checkpointer is not None:
            checkpointer.write(state, snapshot())
        wall_time = time.perf_counter() - start - paused
        return Run(state, history(), wall_time, "interrupted", certificate)
    if checkpointer is not None:
        checkpointer.write(state, snapshot(reason))
    wall_time = time.perf_counter() - start - paused
    return Run(state, history(), wall_time, reason, certificate)
