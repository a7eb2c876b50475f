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
