"""The HMM counterexample (avi.paper.experiments.hmm): closed forms and the tiny run.

Tolerances: closed forms at float64 round-off (1e-9 relative); numpyro's log density is
float32, 1e-4 relative; Monte Carlo ELBOs within 4 standard errors of the exact ones.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import log_density

from avi import AviError
from avi.paper.experiments import hmm
from avi.paper.experiments.common import REFERENCE_LABEL


def test_hmm_density_is_the_chain_with_tridiagonal_precision():
    x = hmm.data(20)
    z = np.random.default_rng(4).standard_normal(20).astype(np.float32)
    value, _ = log_density(hmm.model, (jnp.asarray(x),), {}, {"z": jnp.asarray(z)})
    prec = hmm.precision(20)
    expected = -0.5 * z @ prec @ z + x @ z - 0.5 * x @ x - 20 * math.log(2 * math.pi)
    assert float(value) == pytest.approx(expected, rel=1e-4)


def test_hmm_factorized_optimum_matches_the_paper_and_the_mean_field_kl():
    x = hmm.data()
    optimum = hmm.factorized_optimum(x)
    np.testing.assert_allclose(optimum.mean[:2], [0.618034, 0.854102], atol=1e-6)
    prec = hmm.precision(x.size)
    # log p(x) - ELBO* = KL(q* || p) = (sum log P_nn - log det P) / 2 for the mean-field optimum.
    mean = np.linalg.solve(prec, x)
    log_evidence = (
        0.5 * mean @ prec @ mean
        - 0.5 * x @ x
        - x.size * math.log(2 * math.pi)
        + 0.5 * x.size * math.log(2 * math.pi)
        - 0.5 * np.linalg.slogdet(prec)[1]
    )
    kl = 0.5 * (np.sum(np.log(np.diag(prec))) - np.linalg.slogdet(prec)[1])
    assert log_evidence - optimum.elbo == pytest.approx(kl, rel=1e-9)
    nudged = optimum.mean + 1e-3 * np.random.default_rng(0).standard_normal(x.size)
    assert hmm.elbo(x, nudged, optimum.var) < optimum.elbo


def test_hmm_window_gap_stays_positive_until_the_window_spans_the_series():
    x = hmm.data()
    gaps = [hmm.window_optimum_gap(x, w) for w in range(6)]
    assert gaps[0] == pytest.approx(0.2218, abs=1e-4)
    assert all(g > 0 for g in gaps) and all(a > b for a, b in itertools.pairwise(gaps))
    assert hmm.window_optimum_gap(x, 50) == 0.0  # every datum free: A-VI is F-VI
    with pytest.raises(AviError, match="constant data"):
        hmm.window_optimum_gap(np.arange(5.0), 1)


def test_closed_form_curve_of_the_figure_is_the_window_gap():
    curve = hmm.closed_form_curve()
    assert list(curve) == list(hmm.CURVE_HALF_WIDTHS)
    assert curve[1] == hmm.window_optimum_gap(hmm.data(), 1)


def test_hmm_records_exact_gaps_never_below_the_family_optimum(tiny_run: Callable[[str], Path]):
    out = tiny_run("hmm")
    fits = pd.read_csv(out / "hmm" / "fits.csv")
    # The Monte Carlo estimate agrees with the closed form within 4 standard errors.
    assert (abs(fits["elbo"] - fits["exact_elbo"]) < 4 * fits["elbo_se"]).all()
    summary = pd.read_csv(out / "hmm" / "summary.csv")
    window = summary[summary["family"] != REFERENCE_LABEL].iloc[0]
    # A fitted q lies in its family, so it is never better than the family's optimum.
    assert window["gap_to_optimum"] >= window["closed_form_gap"] - 1e-6


@pytest.mark.slow
def test_hmm_gap_stays_positive_for_every_window_narrower_than_the_series(
    quick_summary: Callable[[str], pd.DataFrame],
):
    summary = quick_summary("hmm")
    assert (summary.loc[summary["expected"] == "open", "verdict"] == "open").all()
    assert (summary.loc[summary["expected"] == "closed", "verdict"] == "closed").all()
