"""Shared fixtures of the paper's tests: tiny in-process reproductions and fake per-fit tables.

Tiny runs (``avi reproduce NAME --size tiny``: F-VI and one amortized family, two seeds, a few
hundred iterations) are made in this process, once per experiment and session, into one output
directory, so that its REPORT.md covers every experiment run so far.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avi.paper.experiments import registry
from avi.paper.reproduce import fit_verdict, reproduce, run_experiment

TinyRun = Callable[[str], Path]
"""Experiment name -> the output directory holding its tiny run (and REPORT.md)."""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Run an experiment at the tiny size on first use; the shared output directory."""
    out = tmp_path_factory.mktemp("reproduction")
    done: set[str] = set()

    def run(name: str) -> Path:
        if name not in done:
            report = reproduce(name, "tiny", out=out, force=True)  # one folder, many runs
            assert report == out / "REPORT.md"
            done.add(name)
        return out

    return run


@pytest.fixture(scope="session")
def quick_summary() -> Callable[[str], pd.DataFrame]:
    """An experiment's summary at the quick size over two seeds, indexed by family (slow)."""

    def summary(name: str) -> pd.DataFrame:
        setup = registry.build(name, "quick")
        return run_experiment(setup, "quick", range(2)).summary.set_index("family")

    return summary


@pytest.fixture(scope="session")
def verdicts() -> Callable[[pd.DataFrame, list[str]], list[str]]:
    """The verdicts of the families ``labels`` in a summary indexed by family."""
    return lambda summary, labels: [summary.loc[label, "verdict"] for label in labels]


@pytest.fixture(scope="session")
def fake_fits() -> Callable[[dict[str, list[float]]], pd.DataFrame]:
    """Per-fit records with the given gaps, each with Monte Carlo standard error 0.1."""
    return _fake_fits


def _fake_fits(gaps: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for family, values in gaps.items():
        for seed, gap in enumerate(values):
            rows.append({
                "family": family, "seed": seed, "elbo": -100.0 - gap, "elbo_se": 0.1, "gap": gap,
                "gap_se": 0.1, "verdict": fit_verdict(gap, 0.1, -100.0), "reference_lift": 0.0,
                "num_steps": 100,
                "wall_time": 1.0, "num_parameters": 3, "steps_1pct": 40.0, "time_1pct": 0.4,
                "steps_strict": math.inf, "time_strict": math.inf, "strict_threshold": 0.01,
            })  # fmt: skip
    return pd.DataFrame(rows)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def write_idx() -> Callable[[Path, np.ndarray], None]:
    """Write an unsigned-byte IDX file (gzip-compressed if the name ends in .gz)."""
    return _write_idx


@pytest.fixture
def fashion_directory(tmp_path: Path) -> Path:
    """A directory of small FashionMNIST-shaped IDX files: 6 training, 3 test images."""
    rng = np.random.default_rng(1)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28)))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)))
    return tmp_path
