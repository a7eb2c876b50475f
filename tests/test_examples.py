"""Every example under examples/ runs, at a tiny size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_radon_example_at_a_tiny_size():
    """About 80 s on two cores (five fits, a structure check and the reliability flags)."""
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(EXAMPLES / "radon.py"), "--counties", "20",
         "--max-steps", "300", "--held-out", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "in 20 counties" in out and "amortization gap" in out
    assert "held-out counties" in out and out.count("False") + out.count("True") >= 2


def _run_tiny(script: str, out: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(EXAMPLES / script), "--out", str(out),
         "--images", "200", "--max-steps", "200"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("reconstructions.png", "generated.png", "aggregate_posterior.png"):
        assert (out / name).stat().st_size > 1000
    return result.stdout


@pytest.mark.slow
def test_vae_digits_example_at_a_tiny_size(tmp_path):
    """About a minute on two cores: 200 images, 200 steps, the figures written."""
    out = _run_tiny("vae_digits.py", tmp_path)
    assert "independent pixels at their means" in out and "avi ELBO" in out


@pytest.mark.slow
def test_bayesian_decoder_example_at_a_tiny_size(tmp_path):
    """About a minute on two cores: the decoder's weights as globals, the figures written."""
    out = _run_tiny("bayesian_decoder_digits.py", tmp_path)
    assert "4 weight sites as globals" in out
