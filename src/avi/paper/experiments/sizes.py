"""Run sizes: their names, one value per size, and the setup of a run on one data vector.

Run sizes (decided here; the paper has one size per experiment):

* ``full``: the paper's sizes (section 4 and appendix B): N, iterations, draws, learning rates.
* ``medium``: the paper's N, iterations and learning rates with one draw per step (the HMM keeps
  its 100); 16 minutes for all five on two CPU cores with three seeds.
* ``quick``: all five experiments in under ten minutes on two CPU cores (``avi reproduce all
  --quick``): N = 1,000, fewer iterations, 4 draws per step.
* ``tiny``: seconds per experiment, for the default test suite: F-VI and one amortized family,
  tiny data, a few hundred iterations; findings are not expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import numpy as np

from avi.errors import AviError
from avi.model import Model
from avi.paper.experiments.common import ClaimCheck, FamilySpec, Setup, keep

Size = Literal["tiny", "quick", "medium", "full"]
SIZES: tuple[Size, ...] = ("tiny", "quick", "medium", "full")

DEFAULT_SEEDS: Mapping[Size, int] = {"tiny": 2, "quick": 2, "medium": 3, "full": 10}
"""Seeds per size when ``--seeds`` is not given (the paper uses 10)."""

T = TypeVar("T")


def check_size(size: str) -> Size:
    """Return ``size`` if it is a run size.

    Raises:
        AviError: naming the argument and the sizes there are.
    """
    if size not in SIZES:
        raise AviError(f"size={size!r} is not a run size; choose one of {', '.join(SIZES)}.")
    return size  # type: ignore[return-value]


@dataclass(frozen=True)
class Sizes(Generic[T]):
    """One value per run size, looked up by the size's name; ``full`` is the paper's."""

    tiny: T
    quick: T
    medium: T
    full: T

    def __getitem__(self, size: str) -> T:
        """The value at ``size``.

        Raises:
            AviError: ``size`` is not a run size (:func:`check_size`).
        """
        return getattr(self, check_size(size))


class Scale(NamedTuple):
    """The sizes of one run of an experiment on one data vector.

    Attributes:
        num_data: N.
        num_steps: optimisation steps per fit.
        num_particles: Monte Carlo draws per step.
        families: labels of the families run besides F-VI (None: every family).
        eval_particles: draws of each final ELBO estimate.
    """

    num_data: int
    num_steps: int
    num_particles: int
    families: tuple[str, ...] | None = None
    eval_particles: int = 1000

    def against(self, paper: Scale) -> str:
        """This run's N, iterations and draws per step beside the paper's, for the report."""
        return (
            f"N = {self.num_data:,} (paper {paper.num_data:,}), {self.num_steps:,} iterations "
            f"(paper {paper.num_steps:,}), {self.num_particles} draws per step "
            f"(paper {paper.num_particles})"
        )


def vector_setup(
    name: str,
    title: str,
    model: Model,
    data: np.ndarray,
    scale: Scale,
    families: tuple[FamilySpec, ...],
    settings: str,
    check_claims: ClaimCheck,
    **optional: Any,
) -> Setup:
    """The :class:`Setup` of a full-batch experiment whose only argument is the data vector.

    Args:
        name, title, model, settings, check_claims: as in :class:`Setup`.
        data: x, the model's one argument, of length ``scale.num_data``.
        scale: the run's sizes; its ``families`` selects among ``families``.
        families: every family of the experiment, F-VI first.
        **optional: ``exact_elbo``, ``metrics``, ``chunk_size`` or ``verdict_tolerance`` of
            :class:`Setup`.
    """
    assert len(data) == scale.num_data, "the data must have the scale's N"
    return Setup(
        name=name,
        title=title,
        model=model,
        args=(data,),
        num_data=scale.num_data,
        families=keep(families, scale.families),
        num_steps=scale.num_steps,
        num_particles=scale.num_particles,
        batch_size=None,
        eval_particles=scale.eval_particles,
        settings=settings,
        check_claims=check_claims,
        **optional,
    )
