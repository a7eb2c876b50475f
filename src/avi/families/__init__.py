"""Variational families of the local latents (the global factor q(theta) is shared by all).

A family is a factor (:mod:`avi.families.factor`; :class:`Diagonal` is the paper's,
:class:`FullRank` and :class:`LowRank` correlate a datum's coordinates, :class:`Flow` is a
spline flow) and a rule
giving each datum its factor's parameters (:mod:`avi.families.protocol`): free per datum
(:class:`Factorized`), shared (:class:`Constant`) or from an encoder (:class:`Amortized`, with
:class:`MLP` or :class:`Polynomial` encoders and optional :class:`Window` inputs).
"""

from __future__ import annotations

from typing import Any

from avi.errors import FamilyError
from avi.families.amortized import Amortized
from avi.families.diagonal import INIT_LOG_SCALE, Diagonal
from avi.families.encoders import MLP, EncoderSpec, Polynomial
from avi.families.factor import Factor
from avi.families.factorized import Constant, Factorized
from avi.families.flow import Flow
from avi.families.fullrank import FullRank
from avi.families.lowrank import LowRank
from avi.families.protocol import Family, LocalData, LocalFamily, count_parameters
from avi.families.window import Window

__all__ = [
    "INIT_LOG_SCALE",
    "MLP",
    "Amortized",
    "Constant",
    "Diagonal",
    "EncoderSpec",
    "Factor",
    "Factorized",
    "Family",
    "Flow",
    "FullRank",
    "LocalData",
    "LocalFamily",
    "LowRank",
    "Polynomial",
    "Window",
    "as_family",
    "count_parameters",
]

_FAMILY_NAMES = {"factorized": Factorized, "constant": Constant, "amortized": Amortized}


def as_family(family: Any) -> Family:
    """Accept a family object (anything following :class:`LocalFamily`) or one of the strings
    'factorized', 'constant', 'amortized'.

    Raises:
        FamilyError: anything else.
    """
    if isinstance(family, str) and family.lower() in _FAMILY_NAMES:
        return _FAMILY_NAMES[family.lower()]()
    if not isinstance(family, str) and isinstance(family, LocalFamily):
        return family
    raise FamilyError(
        f"family={family!r} is not a variational family; give avi.Factorized(), avi.Constant(), "
        "avi.Amortized(encoder) or one of 'factorized', 'constant', 'amortized'."
    )
