"""The registry of experiments (avi.paper.experiments.registry): names, sizes, hooks."""

from __future__ import annotations

import pytest

from avi import AviError, cli
from avi.paper.experiments import registry


def test_unknown_experiment_is_rejected_by_name(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(AviError, match="'nope' is unknown; choose one of linear"):
        registry.names("nope")
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "nope"])
    assert "argument NAME: invalid choice: 'nope'" in capsys.readouterr().err


def test_unknown_size_is_rejected_by_name():
    with pytest.raises(AviError, match="size='huge'"):
        registry.build("linear", "huge")


def test_every_experiment_has_an_entry_and_all_is_not_one():
    assert registry.names(registry.ALL) == registry.EXPERIMENTS == tuple(registry.ENTRIES)
    with pytest.raises(AviError, match="give one experiment"):
        registry.build(registry.ALL, "tiny")


def test_hooks_are_declared_by_the_experiments_that_need_them():
    with_figures = {n for n in registry.EXPERIMENTS if registry.entry(n).figures is not None}
    assert with_figures == {"saw", "hmm"}
    assert registry.entry("nonlinear").report_columns == ()
    assert ("train_mse", "train MSE") in registry.entry("deep_generative").report_columns
