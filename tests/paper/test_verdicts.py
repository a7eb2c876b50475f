"""Verdicts over seeds (avi.paper.reproduce.verdicts): computed from the run, set beside the paper."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

import avi
from avi.paper.experiments.common import REFERENCE_LABEL, FamilySpec
from avi.paper.reproduce.verdicts import summarize


def test_verdict_and_agreement_come_from_the_run(
    fake_fits: Callable[[dict[str, list[float]]], pd.DataFrame],
):
    families = (
        FamilySpec(REFERENCE_LABEL, avi.Factorized(), 1e-2, None, "reference"),
        FamilySpec("closes", avi.Constant(), 1e-2, True, "closes the gap"),
        FamilySpec("stays open", avi.Constant(), 1e-2, False, "does not close the gap"),
        FamilySpec("half", avi.Constant(), 1e-2, True, "closes the gap"),
    )
    fits = fake_fits(
        {
            REFERENCE_LABEL: [0, 0, 0],
            "closes": [5, 5, 5],
            "stays open": [0.1, 0.1, 0.1],
            "half": [0, 9, 9],
            "beats F-VI": [0, 0, -3],
        }
    )
    families += (FamilySpec("beats F-VI", avi.Constant(), 1e-2, True, "closes the gap"),)
    rows = summarize(families, fits).set_index("family")
    assert rows.loc["closes", "verdict"] == "open" and rows.loc["closes", "agrees"] == "no"
    assert (
        rows.loc["stays open", "verdict"] == "closed" and rows.loc["stays open", "agrees"] == "no"
    )
    # seeds must agree: one closed seed of three is neither closed nor open
    assert rows.loc["half", "closed_seeds"] == 1 and rows.loc["half", "verdict"] == "seeds disagree"
    # a seed above F-VI beyond noise: F-VI was not at its optimum (Prop. 2.1)
    assert rows.loc["beats F-VI", "verdict"] == "reference not converged"
    assert rows.loc["beats F-VI", "agrees"] == "no"
    assert rows.loc["closes", "gap"] == 5.0  # the median over seeds
    assert rows.loc[REFERENCE_LABEL, "agrees"] == "" and rows.loc["closes", "reached_strict"] == 0
    assert rows.loc["closes", "median_steps_strict"] == math.inf
