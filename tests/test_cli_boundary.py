"""The command line's boundary: data files, output folders and sizes are checked before any fit,
and ``avi reproduce`` never overwrites or deletes a user's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avi.cli.main import main
from avi.errors import AviError
from avi.paper.reproduce import reproduce
from avi.paper.reproduce.output import REPORT_TITLE, check_output
from avi.paper.reproduce.report import write_report

MODEL = """
import numpyro
import numpyro.distributions as dist

def model(y):
    theta = numpyro.sample("theta", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(theta, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)
"""


@pytest.fixture
def model_file(tmp_path: Path) -> str:
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return f"{path}:model"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_npy_file_is_the_models_only_argument(tmp_path, model_file, capsys):
    path = tmp_path / "y.npy"
    np.save(path, np.random.default_rng(0).normal(size=12).astype(np.float32))
    code, out, _ = _run(["check", model_file, "--data", str(path)], capsys)
    assert code == 0 and "verdict: simple-hierarchical" in out


@pytest.mark.parametrize("kind", ["truncated", "text", "missing"])
def test_unreadable_data_files_are_refused_clearly(tmp_path, model_file, capsys, kind):
    path = tmp_path / "data.npz"
    if kind == "truncated":
        np.savez(path, arg0=np.arange(12.0))
        content = path.read_bytes()
        path.write_bytes(content[: len(content) // 2])
    elif kind == "text":
        path.write_text("1.0 2.0 3.0\n")
    code, _, err = _run(["check", model_file, "--data", str(path)], capsys)
    assert code == 2
    assert err.startswith("avi check: error: --data")
    assert {"truncated": "numpy.savez", "text": "not a numpy file", "missing": "no such file"}[
        kind
    ] in err


def test_an_existing_file_as_figures_is_refused_before_any_fit(tmp_path, model_file, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, arg0=np.arange(12.0, dtype=np.float32))
    figures = tmp_path / "figures"
    figures.write_text("mine")
    argv = ["compare", model_file, "--data", str(data), "--figures", str(figures)]
    code, out, err = _run([*argv, "--num-steps", "100000", "--no-progress"], capsys)
    assert code == 2 and "--figures" in err and "it is a file" in err
    assert out == "" and figures.read_text() == "mine"


@pytest.mark.parametrize("num_data", ["0", "1", "-3"])
def test_demo_refuses_too_few_data(num_data, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--num-data", num_data])
    assert "--num-data" in capsys.readouterr().err


# ---- avi reproduce --out ----------------------------------------------------------------------


def test_reproduce_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    (tmp_path / "REPORT.md").write_text("my own notes")
    (tmp_path / "linear").mkdir()
    (tmp_path / "linear" / "summary.csv").write_text("mine")
    code, _, err = _run(["reproduce", "linear", "--size", "tiny", "--out", str(tmp_path)], capsys)
    assert code == 2 and "not empty" in err and "--force" in err
    assert (tmp_path / "REPORT.md").read_text() == "my own notes"
    assert (tmp_path / "linear" / "summary.csv").read_text() == "mine"


def test_force_still_refuses_to_replace_files_avi_did_not_write(tmp_path):
    (tmp_path / "REPORT.md").write_text("my own notes")
    with pytest.raises(AviError, match="REPORT.md.*did not write"):
        reproduce("linear", "tiny", out=tmp_path, force=True)
    assert (tmp_path / "REPORT.md").read_text() == "my own notes"
    (tmp_path / "REPORT.md").unlink()
    (tmp_path / "linear").mkdir()
    (tmp_path / "linear" / "summary.csv").write_text("mine")
    with pytest.raises(AviError, match="linear.*did not write"):
        reproduce("linear", "tiny", out=tmp_path, force=True)
    assert (tmp_path / "linear" / "summary.csv").read_text() == "mine"


def test_force_accepts_avis_own_files_and_strays(tmp_path):
    (tmp_path / "REPORT.md").write_text(f"{REPORT_TITLE}, Amortized ...\n")
    (tmp_path / "linear").mkdir()
    (tmp_path / "linear" / "run.json").write_text(json.dumps({"name": "linear"}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "todo.txt").write_text("mine")
    check_output(tmp_path, ["linear", "saw"], force=True)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("mine")
    with pytest.raises(AviError, match="it is a file"):
        reproduce("linear", "tiny", out=target)
    assert target.read_text() == "mine"


def test_the_report_ignores_stray_and_damaged_folders(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "run.json").write_text("{}")
    (tmp_path / "linear").mkdir()
    (tmp_path / "linear" / "run.json").write_text(json.dumps({"name": "linear"}))
    (tmp_path / "saw").mkdir()  # a folder with an experiment's name but not avi's
    report = write_report(tmp_path)
    text = report.read_text()
    assert text.startswith(REPORT_TITLE)
    assert "Not read" in text and "notes" not in text
