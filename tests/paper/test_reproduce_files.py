"""The files of a run (avi.paper.reproduce.files, .figures): tables, run.json and figures.

Every experiment is run once at the tiny size in this process (see conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avi.paper.experiments import registry
from avi.paper.experiments.common import REFERENCE_LABEL


@pytest.mark.parametrize("name", registry.EXPERIMENTS)
def test_each_experiment_writes_tables_and_figures(tiny_run: Callable[[str], Path], name: str):
    directory = tiny_run(name) / name
    for file in ("paths.csv", "fits.csv", "summary.csv", "claims.csv", "run.json"):
        assert (directory / file).is_file(), file
    figures = {p.name for p in directory.glob("*.png")}
    assert {"elbo_paths.png", "wall_time.png"} <= figures
    assert ("saw_comparison.png" in figures) == (name == "saw")
    assert ("hmm_gap.png" in figures) == (name == "hmm")
    assert all((directory / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)


@pytest.mark.parametrize("name", registry.EXPERIMENTS)
def test_paths_record_every_chunk_of_every_fit(tiny_run: Callable[[str], Path], name: str):
    directory = tiny_run(name) / name
    info = json.loads((directory / "run.json").read_text())
    paths = pd.read_csv(directory / "paths.csv")
    summary = pd.read_csv(directory / "summary.csv")
    assert list(paths.columns) == ["family", "seed", "step", "wall_time", "elbo"]
    assert set(paths["seed"]) == {0, 1} and info["seeds"] == [0, 1]
    assert set(paths["family"]) == set(summary["family"])
    assert summary["family"].iloc[0] == REFERENCE_LABEL
    for _, path in paths.groupby(["family", "seed"]):
        assert np.all(np.diff(path["step"]) == 20)  # one point per 20 iterations
        assert np.all(np.diff(path["wall_time"]) >= 0) and np.isfinite(path["elbo"]).all()
