"""What every reproduced experiment declares: its model, data, families and the paper's findings.

An experiment module (``linear``, ``nonlinear``, ``deep_generative``, ``saw``, ``hmm``) builds a
:class:`Setup` for a run size with its ``setup(size)`` function. :mod:`avi.paper.reproduce` fits every
family of the setup for every seed, scores the fits and writes the report; it sees a model
only through its setup and its entry in :mod:`avi.paper.experiments.registry` (the hooks for an
experiment's own report columns and figures).

Run sizes and the sizes of each run are in :mod:`avi.paper.experiments.sizes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import optax
import pandas as pd

from avi.families import Factorized, Family
from avi.model import Model
from avi.result import Fit

REFERENCE_LABEL = "F-VI"
"""Label of the factorized family every experiment compares against."""


@cache
def adam(learning_rate: float) -> optax.GradientTransformation:
    """Adam at a fixed rate, one object per rate, so that fits over seeds reuse one program."""
    return optax.adam(learning_rate)


@dataclass(frozen=True)
class FamilySpec:
    """One variational family of an experiment, with the paper's finding about it.

    Attributes:
        label: the name in tables and figures (the reference F-VI family is ``"F-VI"``).
        family: the avi family.
        learning_rate: Adam's rate for this family (the paper's, where it gives one).
        expect_closed: the paper's finding: True if this family closes the amortization gap,
            False if it does not, None for the F-VI reference itself.
        paper: the paper's finding for this family, in words, shown beside its row.
        tags: extra columns for the summary and figures (e.g. encoder width, input domain).
        optimizer: the optax transform; Adam at ``learning_rate`` unless given.
    """

    label: str
    family: Family
    learning_rate: float
    expect_closed: bool | None
    paper: str
    tags: Mapping[str, Any] = field(default_factory=dict)
    optimizer: optax.GradientTransformation | None = None

    @property
    def transform(self) -> optax.GradientTransformation:
        """The optimizer the fit uses."""
        return self.optimizer if self.optimizer is not None else adam(self.learning_rate)


@dataclass(frozen=True)
class Claim:
    """An experiment-level finding of the paper checked against a run.

    Attributes:
        paper: what the paper found.
        measured: what this run measured, in words and numbers.
        agrees: whether the run agrees; None when the run cannot tell (e.g. one seed).
    """

    paper: str
    measured: str
    agrees: bool | None


ClaimCheck = Callable[[pd.DataFrame, pd.DataFrame], list[Claim]]
"""(summary per family, results per fit) -> the experiment-level claims, checked."""

Figures = Callable[[pd.DataFrame, int, Path], list[Path]]
"""(summary per family, N, directory) -> the experiment's own figures, written as PNG files."""

ReportColumns = tuple[tuple[str, str], ...]
"""Experiment-specific summary columns shown in the report: (column, heading)."""


@dataclass(frozen=True)
class Setup:
    """A runnable experiment: model, data, families and fitting settings at one size.

    Attributes:
        name: registry name (``avi reproduce NAME``).
        title: a heading for the report.
        model: the NumPyro model.
        args: the model's arguments (the data).
        num_data: N.
        families: the families compared; the first is the F-VI reference.
        num_steps: optimisation steps per fit (fixed, as in the paper).
        num_particles: Monte Carlo draws per step.
        batch_size: data per step (None: full batch).
        eval_particles: draws of the final ELBO estimate (common random numbers across families).
        settings: one line saying the sizes of this run against the paper's.
        check_claims: computes the experiment-level claims from the run's tables.
        exact_elbo: the ELBO of a fit in closed form, where the model allows it; recorded
            beside the Monte Carlo estimate (columns exact_elbo, exact_gap), which the verdicts
            use, as for every experiment.
        metrics: extra numbers per fit (e.g. reconstruction MSE), added as columns.
        chunk_size: steps per recorded point of the ELBO path; 20 makes each point the mean
            loss over 20 consecutive iterations, the paper's +-10-iteration running mean.
        verdict_tolerance: nats of optimisation error the verdicts forgive beyond Monte Carlo
            error; None: the strict criterion's 1e-4 nats per datum. An experiment whose fits
            are known to reach their optima more closely than its smallest real gap sets less.
    """

    name: str
    title: str
    model: Model
    args: tuple[Any, ...]
    num_data: int
    families: tuple[FamilySpec, ...]
    num_steps: int
    num_particles: int
    batch_size: int | None
    eval_particles: int
    settings: str
    check_claims: ClaimCheck
    exact_elbo: Callable[[Fit], float] | None = None
    metrics: Callable[[Fit], dict[str, float]] | None = None
    chunk_size: int = 20
    verdict_tolerance: float | None = None

    def __post_init__(self) -> None:
        reference = self.families[0]
        assert reference.label == REFERENCE_LABEL and isinstance(reference.family, Factorized), (
            "the first family of a setup must be the F-VI reference"
        )
        labels = [spec.label for spec in self.families]
        assert len(set(labels)) == len(labels), f"duplicate family labels in {labels}"


def keep(
    families: tuple[FamilySpec, ...], labels: tuple[str, ...] | None
) -> tuple[FamilySpec, ...]:
    """The F-VI reference and the families named in ``labels`` (every family when None)."""
    if labels is None:
        return families
    missing = set(labels) - {spec.label for spec in families}
    assert not missing, f"unknown family labels {missing}"
    return tuple(s for s in families if s.label == REFERENCE_LABEL or s.label in labels)


def fit_options(setup: Setup, spec: FamilySpec) -> dict[str, Any]:
    """Keyword arguments of :func:`avi.fit` for one family of a setup (seed excluded)."""
    return {
        "family": spec.family,
        "num_steps": setup.num_steps,
        "num_particles": setup.num_particles,
        "batch_size": setup.batch_size,
        "optimizer": spec.transform,
        "chunk_size": setup.chunk_size,
        "progress": False,
    }


def family_row(summary: pd.DataFrame, label: str) -> pd.Series:
    """The summary row of one family."""
    rows = summary[summary["family"] == label]
    assert len(rows) == 1, f"family {label!r} not in the summary"
    return rows.iloc[0]


def speed_claim(summary: pd.DataFrame, label: str, paper: str, paper_ratio: float) -> Claim:
    """Check "family ``label`` reaches the 1% criterion in fewer iterations than F-VI".

    The ratio is F-VI's median iterations to the 1% criterion over ``label``'s; the run agrees
    when the ratio exceeds 1 (the direction of the paper's finding; its size is reported).
    """
    reference = family_row(summary, REFERENCE_LABEL)["median_steps_1pct"]
    candidate = family_row(summary, label)["median_steps_1pct"]
    with np.errstate(invalid="ignore"):  # never / never: no ratio
        ratio = np.float64(reference) / np.float64(candidate)
    measured = (
        f"median iterations to 1%: {label} {_steps(candidate)}, F-VI {_steps(reference)}; "
        f"ratio {ratio:.2f} (paper {paper_ratio:.2g})"
    )
    if pd.isna(ratio):
        return Claim(paper, measured, None)
    return Claim(paper, measured, bool(ratio > 1.0))


def _steps(value: float) -> str:
    return "never" if value == float("inf") else f"{value:.0f}"
