"""Run sizes (avi.paper.experiments.sizes): lookup by name, the settings line, vector setups."""

from __future__ import annotations

import numpy as np
import pytest

from avi import AviError
from avi.paper.experiments import linear
from avi.paper.experiments.sizes import SIZES, Scale, Sizes, check_size


def test_sizes_are_looked_up_by_name_and_unknown_ones_named():
    sizes = Sizes(tiny=1, quick=2, medium=3, full=4)
    assert [sizes[s] for s in SIZES] == [1, 2, 3, 4] and check_size("quick") == "quick"
    with pytest.raises(AviError, match="size='huge' is not a run size; choose one of tiny"):
        sizes["huge"]


def test_settings_set_the_run_beside_the_paper():
    line = Scale(1_000, 5_000, 4).against(Scale(10_000, 5_000, 100))
    assert line == (
        "N = 1,000 (paper 10,000), 5,000 iterations (paper 5,000), 4 draws per step (paper 100)"
    )


def test_a_vector_setup_keeps_f_vi_and_the_families_of_its_size():
    setup = linear.setup("tiny")
    assert [s.label for s in setup.families] == ["F-VI", "A-VI polynomial degree 1"]
    assert setup.num_data == len(setup.args[0]) == linear.SCALES.tiny.num_data
    assert setup.batch_size is None and setup.exact_elbo is not None
    assert isinstance(setup.args[0], np.ndarray)
