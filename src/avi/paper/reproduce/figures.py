"""The figures of one experiment's run: the generic ones, then the experiment's own (its hook)."""

from __future__ import annotations

from pathlib import Path

from avi.analysis import plots
from avi.paper.experiments import registry
from avi.paper.reproduce.run import ExperimentResult
from avi.paper.reproduce.scoring import PAPER_FRACTION


def save_figures(result: ExperimentResult, directory: Path) -> list[Path]:
    """Write the experiment's figures as PNG files; return their paths.

    Every experiment gets its ELBO paths against F-VI's converged ELBO with the two criteria,
    and its wall times per family; the ``figures`` hook of its registry entry adds its own.
    """
    info = result.info
    order = list(result.summary["family"])
    criteria = {
        "1% criterion": PAPER_FRACTION * abs(info.reference_elbo),
        "strict criterion (median over fits)": float(result.fits["strict_threshold"].median()),
    }
    written = [
        plots.elbo_paths(
            result.paths,
            order,
            info.reference_elbo,
            criteria,
            info.title,
            directory / "elbo_paths.png",
        ),
        plots.wall_time_boxes(result.fits, order, info.title, directory / "wall_time.png"),
    ]
    own = registry.entry(info.name).figures
    if own is not None:
        written += own(result.summary, info.num_data, directory)
    return written
