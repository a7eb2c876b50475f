"""The stop rule (avi.vi.stop): plateaus, annealing stages, and reopening after a refusal."""

from __future__ import annotations

import pytest

import avi


def test_plateau_rule_anneals_after_patience_and_converges_at_the_last_stage():
    rule = avi.vi.PlateauRule(tol=1e-3, stages=2, anneal_factor=0.5, patience=2)
    state = rule.initial_state()
    assert float(state.scale) == 1.0
    for value in [-100.0, -50.0, -49.99, -49.99]:  # two checks without a 0.1% improvement
        state = rule.update(state, value)
    assert int(state.stage) == 1 and float(state.scale) == 0.5 and not bool(state.converged)
    assert float(state.best) == -50.0
    state = rule.update(state, float("nan"))  # non-finite checks change nothing
    assert int(state.since_best) == 0
    state = rule.update(state, -49.98)
    assert not bool(state.converged)
    state = rule.update(state, -49.98)
    assert bool(state.converged) and int(state.stage) == 1


def test_plateau_rule_without_annealing_converges_at_the_first_plateau():
    rule = avi.vi.PlateauRule(tol=1e-3, stages=1, patience=1)
    state = rule.update(rule.initial_state(), -10.0)
    assert not bool(state.converged)
    state = rule.update(state, -10.0)
    assert bool(state.converged) and float(state.scale) == 1.0


def test_reopen_goes_back_one_stage_with_patience_reset():
    rule = avi.vi.PlateauRule(tol=1e-3, stages=3, anneal_factor=0.1, patience=1)
    state = rule.initial_state()
    for value in [-10.0, -10.0, -10.0, -10.0]:
        state = rule.update(state, value)
    assert bool(state.converged) and int(state.stage) == 2
    reopened = rule.reopen(state)
    assert not bool(reopened.converged) and int(reopened.stage) == 1
    assert float(reopened.scale) == pytest.approx(float(state.scale) * 10)
    assert int(reopened.since_best) == 0


def test_the_update_scale_is_the_anneal_factor_to_the_stage():
    rule = avi.vi.PlateauRule(tol=1e-3, stages=4, anneal_factor=0.25, patience=1)
    state = rule.initial_state()
    scales = []
    for _ in range(4):
        state = rule.update(state, -1.0)
        scales.append(float(state.scale))
    assert scales == pytest.approx([1.0, 0.25, 0.0625, 0.015625])
