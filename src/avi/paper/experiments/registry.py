"""The paper's experiments by name, in the order of the paper (``avi reproduce NAME|all``).

Each name has an :class:`Experiment` entry: how to build its :class:`Setup` at a run size, and
the hooks through which the generic reproduction code adds what is particular to it (report
columns, figures). Code outside this module never branches on an experiment's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from avi.errors import AviError
from avi.paper.experiments import deep_generative, hmm, linear, nonlinear, saw
from avi.paper.experiments.common import Figures, ReportColumns, Setup

Build = Callable[[str, "str | Path | None"], Setup]
"""(run size, FashionMNIST IDX directory or None) -> the experiment's setup."""


@dataclass(frozen=True)
class Experiment:
    """One experiment's entry.

    Attributes:
        build: the setup at a run size (the data directory is read by experiments on images).
        report_columns: summary columns of its own shown in the report's family table.
        figures: writes its own figures beside the generic ones (None: none).
    """

    build: Build
    report_columns: ReportColumns = ()
    figures: Figures | None = None


ENTRIES: Mapping[str, Experiment] = {
    "linear": Experiment(lambda size, _: linear.setup(size), linear.REPORT_COLUMNS),
    "nonlinear": Experiment(lambda size, _: nonlinear.setup(size)),
    "deep_generative": Experiment(deep_generative.setup, deep_generative.REPORT_COLUMNS),
    "saw": Experiment(lambda size, _: saw.setup(size), figures=saw.figures),
    "hmm": Experiment(lambda size, _: hmm.setup(size), hmm.REPORT_COLUMNS, hmm.figures),
}
"""Every experiment, in the order of the paper."""

EXPERIMENTS: tuple[str, ...] = tuple(ENTRIES)
ALL = "all"


def names(selection: str) -> tuple[str, ...]:
    """The experiments a NAME argument selects: one, or every one for ``all``.

    Raises:
        AviError: an unknown name; the message lists the known ones.
    """
    if selection == ALL:
        return EXPERIMENTS
    if selection not in EXPERIMENTS:
        raise AviError(
            f"experiment {selection!r} is unknown; choose one of {', '.join(EXPERIMENTS)} or {ALL}."
        )
    return (selection,)


def entry(name: str) -> Experiment:
    """The entry of experiment ``name``.

    Raises:
        AviError: ``name`` is ``all`` or unknown.
    """
    if name == ALL:
        raise AviError(f"name={ALL!r}: give one experiment here; names({ALL!r}) lists them.")
    names(name)
    return ENTRIES[name]


def build(name: str, size: str, data: str | Path | None = None) -> Setup:
    """The :class:`Setup` of experiment ``name`` at ``size``.

    Args:
        name: an experiment name.
        size: a run size (tiny, quick, medium, full).
        data: FashionMNIST IDX directory for the deep generative model (ignored by the others).

    Raises:
        AviError: unknown name or size; missing IDX files.
    """
    return entry(name).build(size, data)
