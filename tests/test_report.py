"""The HTML report: one self-contained page, and that a real browser renders its table and
figures (headless Chromium from Debian's package, installed by ``make browser``)."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

import avi
from avi.analysis.report import comparison_report, fit_report
from avi.paper.experiments import linear

X = linear.simulate(100, seed=0)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    comparison = avi.compare(
        linear.model,
        X,
        families={"factorized": avi.Factorized(), "poly1": avi.Amortized(avi.Polynomial(1))},
        num_steps=400,
        eval_particles=50,
    )
    structure = avi.check(linear.model, X)
    path = tmp_path_factory.mktemp("report") / "compare.html"
    return comparison_report(comparison, path, structure, per_datum_particles=20)


def test_the_page_is_self_contained(page):
    text = page.read_text()
    assert "simple-hierarchical" in text and "Theorem 3.4" in text
    assert text.count("<img") == 2  # ELBO against time, per-datum gaps of poly1
    assert re.search(r"<td>poly1</td>", text)
    assert "Convergence evidence" in text and "nats still to gain" in text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)  # nothing from elsewhere


def test_a_fit_report(tmp_path):
    fit = avi.fit(linear.model, X, family="factorized", progress=False)
    text = fit_report(fit, tmp_path / "fit.html").read_text()
    assert "certified" in text and text.count("<img") == 1


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed here (make browser installs it)")
    return found


def test_a_browser_renders_the_table_and_figures(page, tmp_path):
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert 'data-figures="2"' in dom, dom[:500]  # both figures decoded by the browser
    assert "<td>poly1</td>" in dom
    shot = tmp_path / "page.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 1000 and np.std(pixels) > 0.05
