"""Figures of ``avi reproduce``, after the paper's Fig. 3, 4 and 6 and the HMM counterexample.

Drawn on matplotlib's Agg canvas without pyplot: no display, no global figure state. Every
function takes the run's tables (pandas DataFrames as written by :mod:`avi.paper.reproduce`), writes
one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 110


def _figure(columns: int, width: float = 12.0, height: float = 4.5) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(np.atleast_1d(figure.subplots(1, columns)))


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI)
    return path


def _colours(labels: Sequence[str]) -> dict[str, tuple[float, ...]]:
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def elbo_paths(
    paths: pd.DataFrame,
    order: Sequence[str],
    reference: float,
    levels: Mapping[str, float],
    title: str,
    path: Path,
    smoothing: int = 100,
) -> Path:
    """Distance below F-VI's converged ELBO against iteration and against wall time (Fig. 3).

    Each line is a family's median over seeds of E* - ELBO, after a running mean over
    ``smoothing`` iterations (the recorded points are already 20-iteration means), on a
    symmetric log scale whose linear part spans the smallest level, so that paths above E*
    (negative distances) show and Monte Carlo noise below that level stays flat.

    Args:
        paths: columns family, seed, step, wall_time, elbo.
        order: families in legend order.
        reference: E*, F-VI's converged ELBO.
        levels: criterion name -> distance below E* (e.g. the 1% and strict criteria).
        title: figure title.
        path: output PNG.
        smoothing: iterations of the running mean drawn.
    """
    figure, (by_step, by_time) = _figure(2)
    colours = _colours(order)
    for label in order:
        own = paths[paths["family"] == label]
        elbo = own.pivot(index="step", columns="seed", values="elbo")
        spacing = float(np.median(np.diff(elbo.index))) if len(elbo) > 1 else 1.0
        window = max(1, round(smoothing / spacing))
        distance = (reference - elbo.rolling(window, min_periods=1).mean()).median(axis=1)
        times = own.pivot(index="step", columns="seed", values="wall_time").median(axis=1)
        by_step.plot(distance.index, distance.to_numpy(), color=colours[label], label=label)
        by_time.plot(times.to_numpy(), distance.to_numpy(), color=colours[label])
    smallest = min(levels.values())
    for axes, xlabel in ((by_step, "iteration"), (by_time, "wall time (s, compilation excluded)")):
        for (name, level), style in zip(levels.items(), ("--", ":"), strict=False):
            axes.axhline(level, color="grey", linestyle=style, linewidth=1, label=name)
        axes.set_yscale("symlog", linthresh=smallest)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("E* - ELBO (nats below F-VI's converged ELBO)")
        axes.grid(alpha=0.3)
    handles, labels = by_step.get_legend_handles_labels()
    by_time.legend(handles, labels, fontsize=7, loc="upper right")
    figure.suptitle(f"{title}: ELBO paths (median over seeds, {smoothing}-iteration running mean)")
    return _save(figure, path)


def wall_time_boxes(fits: pd.DataFrame, order: Sequence[str], title: str, path: Path) -> Path:
    """Wall time to the 1% and strict criteria, box plots over seeds (Fig. 4).

    Seeds that never met a criterion are counted in the family's tick label.
    """
    figure, axes_pair = _figure(2, height=5.0)
    positions = np.arange(1, len(order) + 1)
    for axes, column, name in zip(
        axes_pair,
        ("time_1pct", "time_strict"),
        ("the paper's 1% criterion", "the strict criterion"),
        strict=True,
    ):
        ticks = []
        for position, label in zip(positions, order, strict=True):
            times = fits.loc[fits["family"] == label, column].to_numpy()
            finite = times[np.isfinite(times)]
            if finite.size:
                axes.boxplot([finite], positions=[position], widths=0.6)
            never = times.size - finite.size
            ticks.append(f"{label} [never {never}/{times.size}]" if never else label)
        axes.set_xticks(positions, ticks, rotation=35, ha="right", fontsize=7)
        axes.set_xlim(0.5, len(order) + 0.5)
        axes.set_ylabel("seconds (compilation excluded)")
        axes.set_title(f"wall time to {name}", fontsize=10)
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle(f"{title}: wall time to convergence over seeds")
    return _save(figure, path)


def saw_comparison(summary: pd.DataFrame, path: Path) -> Path:
    """Final -ELBO against encoder width, encoder of x_n versus (x_{n-1}, x_n) (Fig. 6).

    Args:
        summary: per-family rows with columns family, input, width, elbo, elbo_se.
        path: output PNG.
    """
    figure, (axes,) = _figure(1, width=7.0, height=4.5)
    amortized = summary.dropna(subset=["input"])
    for (inputs, group), marker in zip(
        amortized.groupby("input", sort=False), ("o", "s"), strict=False
    ):
        group = group.sort_values("width")
        axes.errorbar(
            group["width"],
            -group["elbo"],
            yerr=2 * group["elbo_se"],
            marker=marker,
            capsize=3,
            label=f"A-VI MLP on {inputs}",
        )
    reference = summary[summary["family"] == "F-VI"]
    axes.axhline(-reference["elbo"].iloc[0], color="black", linewidth=1, label="F-VI")
    constant = summary[summary["family"] == "constant"]
    if len(constant):
        axes.plot([], [], " ", label=f"constant: {-constant['elbo'].iloc[0]:.0f} (off the chart)")
    widths = sorted(amortized["width"].unique())
    axes.set_xscale("log", base=2)
    axes.set_xticks(widths, [f"{w:g}" for w in widths])
    axes.set_xlabel("encoder width k")
    axes.set_ylabel("-ELBO (final, mean over seeds; bars 2 se)")
    axes.set_title("Saw time series: expanding the encoder's input closes the gap")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def hmm_gap(summary: pd.DataFrame, closed_form: Mapping[int, float], path: Path) -> Path:
    """Amortization gap against window half-width w for the HMM counterexample.

    Args:
        summary: per-family rows with half_width, gap, gap_se, gap_to_optimum, expected.
        closed_form: w -> closed-form gap of the best window-w encoder.
        path: output PNG.
    """
    figure, (axes,) = _figure(1, width=7.0, height=4.5)
    widths = np.array(sorted(closed_form))
    axes.plot(widths, [closed_form[w] for w in widths], "k-", label="closed form (family optimum)")
    narrow = summary[summary["expected"] == "open"].sort_values("half_width")
    axes.errorbar(
        narrow["half_width"],
        narrow["gap"],
        yerr=2 * narrow["gap_se"],
        fmt="o",
        capsize=3,
        label="fitted: gap to fitted F-VI (bars 2 se)",
    )
    axes.plot(
        narrow["half_width"], narrow["gap_to_optimum"], "x", label="fitted: gap to F-VI optimum"
    )
    whole = summary[summary["expected"] == "closed"]
    if len(whole):
        row = whole.iloc[0]
        axes.set_title(
            f"HMM: gap vs window (whole-series window: {row['gap']:.2g} +- {row['gap_se']:.1g})",
            fontsize=10,
        )
    axes.set_yscale("symlog", linthresh=1e-6)
    axes.set_xlabel("window half-width w (offsets -w..w; 0: x_n alone)")
    axes.set_ylabel("gap to F-VI (nats)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)
