"""The deep generative experiment (avi.paper.experiments.deep_generative): model and tiny run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpyro import handlers

from avi import cli
from avi.paper.experiments import deep_generative
from avi.paper.experiments.common import REFERENCE_LABEL


def test_fashion_mnist_setup_uses_every_image_of_a_small_directory(fashion_directory: Path):
    setup = deep_generative.setup("tiny", data=fashion_directory)
    assert setup.args[0].shape == (6, 784)  # tiny asks for 100; the file has 6
    assert "fashion-mnist" in setup.title


def test_missing_idx_files_fail_before_any_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["reproduce", "deep_generative", "--size", "tiny", "--data", str(tmp_path)]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "--data" in error and "train-images-idx3-ubyte" in error
    assert not (tmp_path / "out").exists()


def test_bayesian_decoder_weights_are_global_with_standard_normal_prior():
    architecture = deep_generative.DIGITS
    decoder = deep_generative.BayesianDecoder.create(architecture, 64, noise_scale=0.3)
    images = deep_generative.load_digits().train[:7]
    trace = handlers.trace(handlers.seed(decoder.model, 0)).get_trace(images)
    for name, shape in deep_generative.layer_shapes(architecture, 64).items():
        site = trace[f"{name}_shift"]
        assert site["value"].shape == shape and not site["cond_indep_stack"]
        # W = W0 + D with D ~ N(-W0, I): W ~ N(0, I), and D = 0 starts W at W0.
        np.testing.assert_allclose(site["fn"].mean, -decoder.start[name])
    assert trace["z"]["value"].shape == (7, architecture.latent)
    assert [f.name for f in trace["z"]["cond_indep_stack"]] == ["data"]
    assert trace["x"]["fn"].base_dist.scale == 0.3


def test_digits_keep_the_papers_precision_per_image():
    assert deep_generative.noise_scale(784) == 1.0
    assert 64 / deep_generative.noise_scale(64) ** 2 == pytest.approx(784)


def test_deep_generative_reports_reconstruction_and_only_amortized_test_mse(
    tiny_run: Callable[[str], Path],
):
    fits = pd.read_csv(tiny_run("deep_generative") / "deep_generative" / "fits.csv")
    assert np.isfinite(fits["train_mse"]).all()
    factorized = fits["family"] == REFERENCE_LABEL
    assert fits.loc[factorized, "test_mse"].isna().all()  # F-VI cannot encode new images
    assert np.isfinite(fits.loc[~factorized, "test_mse"]).all()


@pytest.mark.slow
def test_deep_generative_gaps_against_a_reference_that_no_encoder_beats(
    quick_summary: Callable[[str], pd.DataFrame],
    verdicts: Callable[[pd.DataFrame, list[str]], list[str]],
):
    """At the quick budget F-VI's 10,000+ parameters are far from their optimum and the
    encoders beat it (the committed runs showed A-VI 200-411 nats above F-VI, which Prop. 2.1
    forbids at the optimum); refined from the widest encoder's fit, F-VI rises above every
    encoder and every gap is open, shrinking with width (measured: F-VI lifted by 4,739 nats,
    gaps 8,403 / 3,056 / 2,020 / 1,176 nats for widths 1 / 5 / 10 / 21, `avi reproduce
    deep_generative --size quick`, seeds 0-1), and no encoder has collapsed."""
    summary = quick_summary("deep_generative")
    widths = ["A-VI encoder k=1"] + [
        deep_generative.label(k, p) for k, p in ((5, 64), (10, 128), (21, 256))
    ]
    assert summary.loc[REFERENCE_LABEL, "reference_lift"] > 0
    assert set(verdicts(summary, ["constant", *widths])) <= {"open", "closed", "seeds disagree"}
    gaps = summary.loc[widths, "gap"].to_numpy()
    assert (np.diff(gaps) < 0).all()
    assert (
        summary.loc[widths[1:], "train_mse"] < 0.95 * summary.loc["constant", "train_mse"]
    ).all()
