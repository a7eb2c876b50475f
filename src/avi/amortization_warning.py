"""Warn when an amortized family is fitted to a model where amortization must leave a gap.

This module depends only on :mod:`avi.structure` (not on :mod:`avi.fit`), so that ``avi.fit``
can call :func:`warn_if_not_amortizable` without an import cycle.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from avi.families import Amortized, Family
from avi.model import Model
from avi.structure import StructureReport, check


class AmortizationWarning(UserWarning):
    """An amortized family cannot reach factorized VI's optimum on this model (Theorem 3.4)."""


def _window(family: Amortized) -> tuple[int, ...]:
    """Offsets the encoder of ``family`` sees: (0,) for the datum alone."""
    return (0,) if family.inputs is None else family.inputs.offsets


def warn_if_not_amortizable(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None = None,
    family: Family | None = None,
    stacklevel: int = 3,
) -> StructureReport:
    """Run :func:`avi.check` and warn if amortization must leave a gap.

    Warns when the verdict is ``"not-amortizable"`` (no inference function of a strict subset
    of the data is ideal, Proposition 3.8), and, when ``family`` is given and amortized, when
    the verdict is ``"expanded-domain"`` and the encoder's input does not cover the window the
    optimal factors need (the saw model fitted with an encoder of x_n alone, Eq. 11 and 17).

    Args:
        model: the NumPyro model.
        args: its positional arguments.
        kwargs: its keyword arguments.
        plate: name of the data plate, if the automatic choice must be overridden.
        family: the family about to be fitted; None warns on the verdict alone.
        stacklevel: passed to :func:`warnings.warn`; the default 3 points at the caller of
            the function that calls this one (the user's ``avi.fit(...)`` line).

    Returns:
        The structure report.

    Warns:
        AmortizationWarning: with the report's explanation.
    """
    report = check(model, *args, plate=plate, **kwargs)
    if report.verdict == "not-amortizable":
        warnings.warn(
            f"Amortized VI will leave an amortization gap on this model. {report.explanation}",
            AmortizationWarning,
            stacklevel=stacklevel,
        )
    elif (
        report.verdict == "expanded-domain"
        and isinstance(family, Amortized)
        and not set(report.inputs or ()) <= set(_window(family))
    ):
        warnings.warn(
            f"The encoder sees the data at offsets {_window(family)}, which do not cover the "
            f"window {report.inputs} the optimal factors need: expect an amortization gap. "
            f"{report.explanation}",
            AmortizationWarning,
            stacklevel=stacklevel,
        )
    return report
