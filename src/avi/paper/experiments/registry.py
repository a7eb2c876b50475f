"""The paper's experiments by name, in the order of the paper (``avi reproduce NAME|all``)."""

from __future__ import annotations

from pathlib import Path

from avi.errors import AviError
from avi.paper.experiments import deep_generative, hmm, linear, nonlinear, saw
from avi.paper.experiments.common import Setup

EXPERIMENTS: tuple[str, ...] = ("linear", "nonlinear", "deep_generative", "saw", "hmm")
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


def build(name: str, size: str, data: str | Path | None = None) -> Setup:
    """The :class:`Setup` of experiment ``name`` at ``size``.

    Args:
        name: an experiment name.
        size: a run size (tiny, quick, medium, full).
        data: FashionMNIST IDX directory for the deep generative model (ignored by the others).

    Raises:
        AviError: unknown name or size; missing IDX files.
    """
    if name == ALL:
        raise AviError(f"build(name={ALL!r}): give one experiment; names({ALL!r}) lists them.")
    names(name)
    if name == "deep_generative":
        return deep_generative.setup(size, data)
    modules = {"linear": linear, "nonlinear": nonlinear, "saw": saw, "hmm": hmm}
    return modules[name].setup(size)
