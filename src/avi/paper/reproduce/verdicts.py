"""Verdicts over seeds: one summary row per family, with the paper's finding beside it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from avi.analysis.compare import seeds_verdict
from avi.paper.experiments.common import FamilySpec

FIT_COLUMNS: tuple[str, ...] = (
    "family", "seed", "elbo", "elbo_se", "gap", "gap_se", "verdict", "reference_lift",
    "num_steps", "wall_time", "num_parameters", "steps_1pct", "time_1pct", "steps_strict", "time_strict", "strict_threshold",
)  # fmt: skip
"""The columns every fit has; any other column is an experiment's metric, averaged over seeds."""


def mean_stderr(stderrs: pd.Series) -> float:
    """Standard error of a mean over seeds of independent estimates with these stderrs."""
    return math.sqrt(float(np.sum(np.square(stderrs)))) / len(stderrs)


def expected(spec: FamilySpec) -> str:
    """The paper's finding as a verdict: "reference", "closed" or "open"."""
    if spec.expect_closed is None:
        return "reference"
    return "closed" if spec.expect_closed else "open"


def family_verdict(verdicts: pd.Series) -> str:
    """The verdict over seeds (:func:`avi.analysis.compare.seeds_verdict`): the seeds' common
    verdict, "reference not converged" if any seed's, else "seeds disagree"."""
    return seeds_verdict(list(verdicts))


def _criteria(own: pd.DataFrame) -> dict[str, float | int]:
    """Medians over seeds of the iterations and seconds to each criterion; seeds reaching it."""
    row: dict[str, float | int] = {}
    for criterion in ("1pct", "strict"):
        for quantity in ("steps", "time"):
            row[f"median_{quantity}_{criterion}"] = float(np.median(own[f"{quantity}_{criterion}"]))
        row[f"reached_{criterion}"] = int(np.isfinite(own[f"steps_{criterion}"]).sum())
    row["strict_threshold"] = float(own["strict_threshold"].median())
    return row


def summarize(families: Sequence[FamilySpec], fits: pd.DataFrame) -> pd.DataFrame:
    """One row per family: ELBO, gap and verdict over seeds, medians to the criteria, agreement.

    Args:
        families: the experiment's families, F-VI first.
        fits: one row per fit, with :data:`FIT_COLUMNS` and the experiment's metrics.
    """
    metric_columns = [c for c in fits.columns if c not in FIT_COLUMNS]
    rows = []
    for spec in families:
        own = fits[fits["family"] == spec.label]
        verdict = "reference" if spec.expect_closed is None else family_verdict(own["verdict"])
        rows.append(
            {
                "family": spec.label,
                "expected": expected(spec),
                "paper": spec.paper,
                **spec.tags,
                "seeds": len(own),
                "num_parameters": int(own["num_parameters"].iloc[0]),
                "learning_rate": spec.learning_rate,
                "elbo": float(own["elbo"].mean()),
                "elbo_se": mean_stderr(own["elbo_se"]),
                "elbo_sd_seeds": float(own["elbo"].std(ddof=1)) if len(own) > 1 else math.nan,
                "gap": float(own["gap"].median()),
                "gap_se": float(own["gap_se"].median()),
                "closed_seeds": int((own["verdict"] == "closed").sum()),
                "reference_lift": float(own["reference_lift"].mean()),
                "verdict": verdict,
                "agrees": ""
                if verdict == "reference"
                else ("yes" if verdict == expected(spec) else "no"),
                **_criteria(own),
                **{c: float(own[c].mean()) for c in metric_columns},
            }
        )
    return pd.DataFrame(rows)
