"""One self-contained HTML page a user can send to a colleague: what the structure check says,
the fits' table with gaps and standard errors, the ELBO against time, per-datum gaps and the
convergence evidence of every fit.

Self-contained: styles inline, figures embedded as base64 PNG, no script or file from
elsewhere; a small inline script counts the figures the browser decoded into
``<body data-figures=...>`` (what the browser test reads).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from avi.analysis.compare import Comparison
from avi.errors import AviError
from avi.result import Fit
from avi.structure import StructureReport
from avi.vi.runner import family_label

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
.verdict { font-weight: bold; } .note { color: #555; font-size: 0.9em; }
img { max-width: 100%; } .wide { overflow-x: auto; }
"""

COUNT_FIGURES = """
window.addEventListener("load", function () {
  var decoded = Array.from(document.images).filter(function (i) { return i.naturalWidth > 0; });
  document.body.dataset.figures = String(decoded.length);
});
"""


def _figure(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _structure(report: StructureReport | None) -> str:
    if report is None:
        return "<p class='note'>No structure check was run.</p>"
    return (
        f"<p>Verdict: <span class='verdict'>{html.escape(report.verdict)}</span>; encoder "
        f"inputs (offsets): {html.escape(str(report.inputs))}.</p>"
        f"<p>{html.escape(report.explanation)}</p>"
    )


def _evidence(fits: Sequence[tuple[str, Fit]]) -> str:
    rows = []
    for label, fit in fits:
        certificate = fit.certificate
        for block in certificate.blocks:
            rows.append(
                {
                    "fit": label,
                    "stopped": fit.stop_reason,
                    "steps": fit.num_steps,
                    "block": block.name,
                    "parameters": block.size,
                    "nats still to gain": f"{block.gain:.3g} +- {block.stderr:.2g}",
                    "tolerance": f"{block.tolerance:.3g}",
                    "settled": "yes" if block.certified else "NO",
                }
            )
    table = pd.DataFrame(rows).to_html(index=False, border=0, escape=True)
    return (
        f"<div class='wide'>{table}</div>"
        + "<p class='note'>A block is settled when the nats a natural-gradient step could still "
        "gain, plus two standard errors, are within its tolerance; a fit is certified when every "
        "block is.</p>"
    )


def _page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{COUNT_FIGURES}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>Written by avi on {stamp}.</p>"
        f"{body}</body></html>"
    )


def comparison_report(
    comparison: Comparison,
    path: str | Path,
    structure: StructureReport | None = None,
    title: str = "avi compare",
    per_datum_particles: int = 100,
) -> Path:
    """Write ``comparison``'s page to ``path`` (module docstring).

    Args:
        comparison: the result of :func:`avi.compare`.
        path: the HTML file.
        structure: the model's :func:`avi.check` report, if one was run.
        title: the page's heading.
        per_datum_particles: draws of each per-datum gap (:meth:`Comparison.per_datum_gaps`).

    Returns:
        The path.
    """
    summary = comparison.summary()
    table = summary.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")
    sections = [
        ("Structure", _structure(structure)),
        (
            "Families",
            f"<div class='wide'>{table}</div>"
            + "<p class='note'>Gaps are F-VI's ELBO (the F-VI of the family's factor where a "
            "note says so) minus the family's, paired over common draws; a verdict is 'closed' when the gap is within 2 standard errors plus the "
            "tolerance.</p>",
        ),
        ("ELBO against time", _figure(comparison.plot_elbo(), "ELBO against wall time")),
    ]
    gaps = []
    for name in comparison.families:
        if name == comparison.reference or not comparison.families[name].infers_new_data:
            continue
        figure = comparison.plot_per_datum_gaps(name, per_datum_particles)
        gaps.append(_figure(figure, f"per-datum gaps of {name}"))
    if gaps:
        sections.append(("Per-datum gaps", "".join(gaps)))
    fits = [
        (f"{name}, seed {seed}", fit)
        for name, by_seed in comparison.fits.items()
        for seed, fit in zip(comparison.seeds, by_seed, strict=True)
    ]
    sections.append(("Convergence evidence", _evidence(fits)))
    return _write(path, _page(title, sections))


def fit_report(
    fit: Fit,
    path: str | Path,
    structure: StructureReport | None = None,
    title: str | None = None,
    summary: str | None = None,
) -> Path:
    """Write one fit's page to ``path``: the structure check, a summary (``summary`` text or
    the fit's own), the ELBO history and the convergence evidence.

    Returns:
        The path.
    """
    history = fit.history
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(history.wall_time, history.elbo)
    axes.set_xlabel("wall time (s)")
    axes.set_ylabel("ELBO (per chunk)")
    axes.set_title(family_label(fit.family))
    text = summary if summary is not None else repr(fit)
    sections = [
        ("Structure", _structure(structure)),
        ("Fit", f"<pre>{html.escape(text)}</pre>"),
        ("ELBO against time", _figure(figure, "ELBO against wall time")),
        ("Convergence evidence", _evidence([(family_label(fit.family), fit)])),
    ]
    return _write(path, _page(title or f"avi fit: {family_label(fit.family)}", sections))


def _write(path: str | Path, page: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise AviError(f"report {str(path)!r} is a folder; give a file name ending in .html.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
