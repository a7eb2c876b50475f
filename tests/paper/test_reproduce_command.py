"""``avi reproduce`` (avi.cli.paper): parsing and dispatch, in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from avi import AviError, cli
from avi.paper.reproduce import command, reproduce


def test_help_lists_the_experiments(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["reproduce", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "linear, nonlinear, deep_generative, saw, hmm" in text and "--size" in text


def test_command_line_dispatches_to_reproduce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    calls: list[tuple[Any, ...]] = []

    def fake(*args: Any, force: bool = False) -> Path:
        assert force is False
        calls.append(args)
        return tmp_path / "REPORT.md"

    monkeypatch.setattr(command, "reproduce", fake)
    argv = ["reproduce", "saw", "--quick", "--num-seeds", "3", "--out", str(tmp_path)]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "REPORT.md")
    ((name, size, seeds, out, data, _log, line),) = calls
    assert (name, size, seeds, out, data) == ("saw", "quick", 3, tmp_path, None)
    assert line == f"avi reproduce saw --size quick --num-seeds 3 --out {tmp_path}"


def test_old_option_spellings_still_work_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(command, "reproduce", lambda *args, force: calls.append(args) or tmp_path)
    argv = ["reproduce", "hmm", "--seeds", "2", "--data", str(tmp_path), "--out", str(tmp_path)]
    assert cli.main([*argv, "--no-progress"]) == 0
    ((_, _, seeds, _, images, _, line),) = calls
    assert (seeds, images) == (2, tmp_path)
    assert "--num-seeds 2" in line and f"--fashion-mnist {tmp_path}" in line
    err = capsys.readouterr().err
    assert "--seeds is deprecated; write --num-seeds" in err
    assert "--data is deprecated; write --fashion-mnist" in err


def test_seed_counts_are_checked(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "linear", "--seeds", "0"])
    assert "0 is not a positive integer" in capsys.readouterr().err
    with pytest.raises(AviError, match="seeds=0"):
        reproduce("linear", "tiny", seeds=0)
