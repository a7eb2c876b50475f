"""avi.analysis.sweep on the linear model: the smallest encoder that closes the gap is Polynomial(1).

Prop. 3.6: the F-VI optimum's means are linear in x_n with a constant variance, so degree 0
(the constant family) leaves the closed-form gap linear.constant_gap and degrees >= 1 close it.
Same data as tests/test_analysis_compare.py (N = 2,000), so the compiled programs are shared.
"""

from __future__ import annotations

import pytest

import avi
from avi.paper.experiments import linear

N = 2_000


@pytest.fixture(scope="module")
def result() -> avi.Sweep:
    x = linear.simulate(N, seed=0)
    encoders = [avi.Polynomial(2), avi.Polynomial(0), avi.Polynomial(1)]
    return avi.sweep(linear.model, x, encoders=encoders, progress=False)


def test_smallest_closing_encoder_is_degree_one(result: avi.Sweep):
    assert result.smallest == avi.Polynomial(1)


def test_table_orders_encoders_by_size(result: avi.Sweep):
    table = result.table
    assert list(table["encoder"]) == [repr(avi.Polynomial(d)) for d in (0, 1, 2)]
    assert list(table["num_parameters"]) == [4, 5, 6]
    assert list(table["verdict"]) == ["open", "closed", "closed"]
    degree_zero = table.iloc[0]
    x = linear.simulate(N, seed=0)
    assert abs(degree_zero["gap"] - linear.constant_gap(x)) <= 4 * degree_zero["gap_stderr"]
    assert result.comparison.reference == "F-VI"


def test_no_closing_encoder_gives_none():
    x = linear.simulate(N, seed=0)
    result = avi.sweep(
        linear.model, x, encoders=[avi.Polynomial(0)], eval_particles=100, progress=False
    )
    assert result.smallest is None
    assert list(result.table["verdict"]) == ["open"]


@pytest.mark.parametrize(
    ("encoders", "match"),
    [
        ([], "non-empty"),
        ("mlp", "non-empty"),
        ([avi.Polynomial(1), "wide"], r"encoders\[1\]='wide' is not an encoder"),
        ([avi.Polynomial(1), avi.Polynomial(1)], r"encoders\[1\].*twice"),
    ],
)
def test_bad_encoders_are_named(encoders, match):
    with pytest.raises(avi.FamilyError, match=match):
        avi.sweep(linear.model, linear.simulate(20), encoders=encoders)
