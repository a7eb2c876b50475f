"""REPORT.md (avi.paper.reproduce.report): a row per family with the paper's finding beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from avi.paper.experiments import registry
from avi.paper.experiments.common import REFERENCE_LABEL


@pytest.mark.parametrize("name", registry.EXPERIMENTS)
def test_report_has_a_row_per_family_with_finding_and_agreement(
    tiny_run: Callable[[str], Path], name: str
):
    out = tiny_run(name)
    sections = (out / "REPORT.md").read_text().split("\n## ")[1:]
    section = next(s for s in sections if f"({name}/elbo_paths.png)" in s)
    summary = pd.read_csv(out / name / "summary.csv", keep_default_na=False)
    for _, row in summary.iterrows():
        line = next(
            line for line in section.splitlines() if line.startswith(f"| {row['family']} |")
        )
        assert row["paper"] in line
        if row["family"] != REFERENCE_LABEL:
            assert line.rstrip(" |").endswith(row["agrees"])
            assert row["agrees"] == ("yes" if row["verdict"] == row["expected"] else "no")


def test_report_shows_the_experiments_own_columns(tiny_run: Callable[[str], Path]):
    out = tiny_run("linear")
    section = next(s for s in (out / "REPORT.md").read_text().split("\n## ") if "(linear/" in s)
    header = next(line for line in section.splitlines() if line.startswith("| family |"))
    for _, heading in registry.entry("linear").report_columns:
        assert f"| {heading} |" in header
