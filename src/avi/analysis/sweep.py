"""``avi.analysis.sweep``: the smallest encoder that closes the amortization gap.

The paper finds that the encoder needed to close the gap is small (3 parameters for the linear
model, Prop. 3.6; MLPs of width 4 for the nonlinear model) and, it argues, does not grow with
N, while F-VI has 2N + 2 parameters. :func:`sweep` fits one amortized family per encoder and
F-VI (:func:`avi.analysis.compare`), orders the encoders by their number of variational parameters and
returns the first whose gap is closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import pandas as pd

from avi.analysis.compare import NOT_CONVERGED, Comparison, compare
from avi.errors import FamilyError
from avi.families import Amortized, Diagonal, Factor, Factorized, Window
from avi.families.encoders import EncoderSpec
from avi.model import Model

REFERENCE = "F-VI"
"""Name of the F-VI reference in the sweep's comparison."""


@dataclass(frozen=True)
class Sweep:
    """The result of :func:`sweep`.

    Attributes:
        table: one row per encoder, by number of parameters (fewest first): encoder (its
            name), gap, gap_stderr, verdict, elbo, stderr, steps, wall_time,
            time_to_convergence, num_parameters, note (the columns of
            :meth:`avi.Comparison.summary`).
        smallest: the smallest encoder whose gap is closed, as given; None if none closes it,
            or if any encoder's verdict is "reference not converged" (then F-VI, even refined
            from the best encoder's fit, sits below an encoder, and "closed" against it means
            nothing).
        comparison: the comparison behind the table (F-VI under ``"F-VI"``).
    """

    table: pd.DataFrame
    smallest: Any | None
    comparison: Comparison


def encoder_name(encoder: Any, position: int) -> str:
    """Row name: a spec's repr (``Polynomial(degree=1)``), else the Module's class and position."""
    if isinstance(encoder, EncoderSpec):
        return repr(encoder)
    return f"{type(encoder).__name__}#{position}"


def _families(
    encoders: Sequence[Any], inputs: Window | None, factor: Factor
) -> dict[str, Amortized]:
    """name -> Amortized(encoder, inputs, factor), names unique.

    Raises:
        FamilyError: no encoders, or one that is not an encoder.
    """
    if isinstance(encoders, (str, bytes)) or not isinstance(encoders, Sequence) or not encoders:
        raise FamilyError(
            f"encoders={encoders!r}: give a non-empty list such as "
            "[avi.MLP(width=1), avi.MLP(width=2), avi.MLP(width=4)]."
        )
    families = {}
    for position, encoder in enumerate(encoders):
        if not isinstance(encoder, (EncoderSpec, eqx.Module)):
            raise FamilyError(
                f"encoders[{position}]={encoder!r} is not an encoder: give avi.MLP(width), "
                "avi.Polynomial(degree) or an equinox Module."
            )
        name = encoder_name(encoder, position)
        if name in families:
            raise FamilyError(f"encoders[{position}]={encoder!r} is listed twice.")
        families[name] = Amortized(encoder, inputs, factor)
    return families


def sweep(
    model: Model,
    *args: Any,
    encoders: Sequence[Any],
    inputs: Window | None = None,
    factor: Factor | None = None,
    seeds: int | Sequence[int] = 1,
    eval_particles: int = 1000,
    tolerance: float = 0.0,
    **options: Any,
) -> Sweep:
    """Find the smallest encoder (by parameter count) whose amortized family closes the gap.

    Fits F-VI and ``avi.Amortized(encoder, inputs)`` for every encoder with
    :func:`avi.analysis.compare` (same seeds, options and scoring: "closed" means a gap within
    VERDICT_STDERRS standard errors + ``tolerance`` of zero).

    Args:
        model: a NumPyro model.
        *args: the model's positional arguments.
        encoders: encoder specs (``avi.MLP(width)``, ``avi.Polynomial(degree)``) or equinox
            Modules, in any order.
        inputs: the encoders' input (None: the datum; ``avi.Window(offsets)``: a window).
        factor: the factor of every family, F-VI's included (None: ``avi.Diagonal()``).
        seeds: number of seeds or a list of seeds.
        eval_particles: draws of each final ELBO.
        tolerance: nats of gap forgiven beyond Monte Carlo error (optimisation error: useful
            for MLP encoders, whose fits stop a few tenths of a nat short).
        **options: options of :func:`avi.fit` and the model's keyword arguments, as for
            :func:`avi.analysis.compare`.

    Returns:
        The :class:`Sweep`.

    Raises:
        FamilyError: no encoders, or an entry that is not an encoder.
    """
    factor = Diagonal() if factor is None else factor
    families = _families(encoders, inputs, factor)
    comparison = compare(
        model,
        *args,
        families={REFERENCE: Factorized(factor), **families},
        seeds=seeds,
        eval_particles=eval_particles,
        tolerance=tolerance,
        **options,
    )
    summary = comparison.summary()
    table = (
        summary[summary["family"] != REFERENCE]
        .rename(columns={"family": "encoder"})
        .sort_values("num_parameters", kind="stable")
        .reset_index(drop=True)
    )
    by_name = dict(zip(families, encoders, strict=True))
    closed = table[table["verdict"] == "closed"]
    trusted = not (table["verdict"] == NOT_CONVERGED).any()
    smallest = by_name[closed["encoder"].iloc[0]] if len(closed) and trusted else None
    return Sweep(table, smallest, comparison)
