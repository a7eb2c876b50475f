"""Figures of :class:`avi.Comparison`: ELBO against wall time, and per-datum gaps.

Drawn on matplotlib's Agg canvas without pyplot (no display, no global figure state); every
function returns the :class:`matplotlib.figure.Figure`, which the caller saves or shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avi.vi import History


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def elbo_against_time(
    histories: Mapping[str, Sequence[History]], reference_elbo: float, fraction: float
) -> Figure:
    """Each family's ELBO path against wall time, one line per seed (the paper's Fig. 3).

    The view spans the families' final ELBOs around F-VI's, E*; the dashed line is E*, the
    dotted one the convergence criterion E* - fraction |E*| (the paper's 1%). Early points far
    below are cut off.

    Args:
        histories: family name -> the ``fit.history`` of each seed.
        reference_elbo: E*, F-VI's final ELBO.
        fraction: the convergence criterion's fraction of |E*|.
    """
    figure, axes = _figure()
    palette = colormaps["tab10"]
    criterion = reference_elbo - fraction * abs(reference_elbo)
    finals = [h.elbo[-1] for runs in histories.values() for h in runs]
    highest = max(
        max(float(np.max(h.elbo)) for runs in histories.values() for h in runs), reference_elbo
    )
    span = max(reference_elbo - min(finals), reference_elbo - criterion, 1e-6)
    for i, (name, runs) in enumerate(histories.items()):
        for j, history in enumerate(runs):
            axes.plot(
                history.wall_time,
                history.elbo,
                color=palette(i % palette.N),
                alpha=0.8,
                label=name if j == 0 else None,
            )
    axes.axhline(
        reference_elbo, color="black", linestyle="--", linewidth=1, label="F-VI final ELBO"
    )
    axes.axhline(
        criterion, color="grey", linestyle=":", linewidth=1, label=f"{fraction:.0%} criterion"
    )
    axes.set_ylim(reference_elbo - 1.5 * span, highest + 0.1 * span)
    axes.set_xlabel("wall time (s)")
    axes.set_ylabel("ELBO (chunk mean)")
    axes.set_title("ELBO against wall time")
    axes.legend(fontsize="small")
    return figure


def per_datum_gap_histogram(gaps: np.ndarray, family: str, reference: str) -> Figure:
    """Histogram of the per-datum gaps l_n(reference) - l_n(family).

    Args:
        gaps: (N,) per-datum gaps (:meth:`avi.Comparison.per_datum_gaps`).
        family: the family's name.
        reference: the F-VI reference's name.
    """
    figure, axes = _figure()
    axes.hist(gaps, bins=min(50, max(10, gaps.size // 20)), color=colormaps["tab10"](0))
    axes.axvline(0.0, color="black", linestyle="--", linewidth=1)
    axes.set_xlabel(f"per-datum gap: ELBO contribution under {reference} minus under {family}")
    axes.set_ylabel("data")
    axes.set_title(f"{family}: per-datum gaps (sum {np.sum(gaps):.2f}, max {np.max(gaps):.2f})")
    return figure
