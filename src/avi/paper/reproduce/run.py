"""Running one experiment: fit every family for every seed, score each fit against F-VI.

For every seed the families are fitted in the setup's order; the first, F-VI, is the seed's
reference. Every family of a seed gets the same final-ELBO draws (common random numbers), so the
paired differences to F-VI have a small variance; the fits' paths are then scored against F-VI's
converged ELBO (:func:`avi.paper.reproduce.scoring.convergence`) and summarised over seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

import avi
from avi.analysis.compare import paired_gap
from avi.paper.experiments.common import REFERENCE_LABEL, Claim, FamilySpec, Setup, fit_options
from avi.paper.reproduce.scoring import (
    EVAL_SEED,
    STRICT_NATS_PER_DATUM,
    closes,
    compile_free_times,
    convergence,
)
from avi.paper.reproduce.verdicts import summarize

Log = Callable[[str], None]
"""Receives one progress line."""


@dataclass(frozen=True)
class RunInfo:
    """What a report needs to know about a run besides its tables."""

    name: str
    title: str
    size: str
    seeds: list[int]
    settings: str
    num_data: int
    exact: bool
    eval_particles: int
    reference_elbo: float
    strict_tolerance: float
    duration_s: float
    command: str = "avi reproduce"


@dataclass
class ExperimentResult:
    """The tables of one experiment's run."""

    info: RunInfo
    paths: pd.DataFrame
    fits: pd.DataFrame
    summary: pd.DataFrame
    claims: list[Claim]


class _Reference(NamedTuple):
    """The seed's F-VI fit, against which the seed's other fits are scored."""

    draws: np.ndarray
    exact: float | None


def _path(spec: FamilySpec, seed: int, fit: avi.Fit) -> pd.DataFrame:
    """The fit's ELBO path, one point per chunk, wall times without compilation."""
    history = fit.history
    return pd.DataFrame(
        {
            "family": spec.label,
            "seed": seed,
            "step": history.step,
            "wall_time": compile_free_times(np.asarray(history.wall_time)),
            "elbo": history.elbo,
        }
    )


def _score(
    setup: Setup, fit: avi.Fit, seed: int, reference: _Reference | None
) -> tuple[dict[str, Any], _Reference]:
    """Final ELBO, gap and whether it closes, for one fit; the reference it was scored against.

    The first fit of a seed (F-VI) is its own reference.
    """
    draws = fit.elbo_draws(setup.eval_particles, seed=EVAL_SEED + seed)
    exact = None if setup.exact_elbo is None else float(setup.exact_elbo(fit))
    if reference is None:
        reference = _Reference(draws, exact)
    gap = paired_gap(reference.draws, draws)
    elbo = float(np.mean(draws))
    record = {
        "elbo": elbo,
        "elbo_se": float(np.std(draws, ddof=1) / math.sqrt(draws.size)),
        "gap": gap.mean,
        "gap_se": gap.stderr,
        "closed": closes(gap.mean, gap.stderr, elbo),
    }
    if exact is not None:
        assert reference.exact is not None
        record |= {"exact_elbo": exact, "exact_gap": reference.exact - exact}
    return record, reference


def _run_seed(setup: Setup, seed: int, log: Log) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Fit every family for one seed; paths and per-fit records (gaps against this seed's F-VI)."""
    paths, records = [], []
    reference: _Reference | None = None
    for spec in setup.families:
        fit = avi.fit(setup.model, *setup.args, seed=seed, **fit_options(setup, spec))
        score, reference = _score(setup, fit, seed, reference)
        path = _path(spec, seed, fit)
        paths.append(path)
        records.append(
            {
                "family": spec.label,
                "seed": seed,
                **score,
                "num_steps": fit.num_steps,
                "wall_time": float(path["wall_time"].iloc[-1]),
                "num_parameters": fit.num_parameters,
                **(setup.metrics(fit) if setup.metrics else {}),
            }
        )
        log(
            f"[{setup.name}] seed {seed} {spec.label}: ELBO {score['elbo']:.2f}, gap "
            f"{score['gap']:.3g} +- {score['gap_se']:.2g}, {fit.num_steps} steps in "
            f"{fit.wall_time:.1f} s"
        )
    return paths, records


def run_experiment(
    setup: Setup, size: str, seeds: Iterable[int], log: Log = lambda _: None
) -> ExperimentResult:
    """Fit every family of ``setup`` for every seed and score the fits.

    Args:
        setup: the experiment.
        size: the run size it was built at (recorded).
        seeds: optimisation seeds (the data are the setup's, the same for every seed).
        log: receives one line per fit.
    """
    seeds = [int(s) for s in seeds]
    start = time.perf_counter()
    paths, records = [], []
    for seed in seeds:
        seed_paths, seed_records = _run_seed(setup, seed, log)
        paths += seed_paths
        records += seed_records
    paths_table = pd.concat(paths, ignore_index=True)
    fits = pd.DataFrame(records)
    reference = float(fits.loc[fits["family"] == REFERENCE_LABEL, "elbo"].mean())
    tolerance = STRICT_NATS_PER_DATUM * setup.num_data
    criteria = pd.DataFrame(
        [
            {"seed": seed, "family": family, **convergence(path, reference, tolerance)}
            for (seed, family), path in paths_table.groupby(["seed", "family"])
        ]
    )
    fits = fits.merge(criteria, on=["seed", "family"], validate="one_to_one")
    summary = summarize(setup.families, fits)
    info = RunInfo(
        name=setup.name,
        title=setup.title,
        size=size,
        seeds=seeds,
        settings=setup.settings,
        num_data=setup.num_data,
        exact=setup.exact_elbo is not None,
        eval_particles=setup.eval_particles,
        reference_elbo=reference,
        strict_tolerance=tolerance,
        duration_s=time.perf_counter() - start,
    )
    return ExperimentResult(info, paths_table, fits, summary, setup.check_claims(summary, fits))
