"""The files of one experiment's run: its tables as CSV, its run.json, and reading them back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from avi.paper.reproduce.figures import save_figures
from avi.paper.reproduce.run import ExperimentResult


def _agreement(agrees: bool | None) -> str:
    return {True: "yes", False: "no", None: "cannot tell"}[agrees]


def save(result: ExperimentResult, directory: Path) -> None:
    """Write paths.csv, fits.csv, summary.csv, claims.csv, run.json and the figures."""
    directory.mkdir(parents=True, exist_ok=True)
    result.paths.to_csv(directory / "paths.csv", index=False, float_format="%.9g")
    result.fits.to_csv(directory / "fits.csv", index=False)
    result.summary.to_csv(directory / "summary.csv", index=False)
    claims = pd.DataFrame(
        [
            {"paper": c.paper, "measured": c.measured, "agrees": _agreement(c.agrees)}
            for c in result.claims
        ],
        columns=["paper", "measured", "agrees"],
    )
    claims.to_csv(directory / "claims.csv", index=False)
    (directory / "run.json").write_text(json.dumps(asdict(result.info), indent=2) + "\n")
    save_figures(result, directory)


def read_table(path: Path) -> pd.DataFrame:
    """A summary.csv or claims.csv as written by :func:`save` (verdict columns as text)."""
    return pd.read_csv(path, dtype={"agrees": str, "expected": str, "verdict": str}).fillna(
        {"agrees": ""}
    )


def read_info(directory: Path) -> dict:
    """The run.json of an experiment's directory."""
    return json.loads((directory / "run.json").read_text())
