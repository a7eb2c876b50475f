"""avi: amortized variational inference for NumPyro models (Margossian and Blei, 2024)."""

from avi.encoders import MLP, Polynomial
from avi.errors import AviError, DataError, DivergenceError, FamilyError, ModelError
from avi.families import Amortized, Constant, Factorized, Window
from avi.fit import Estimate, Fit, History, fit
from avi.structure import StructureReport, check

__all__ = [
    "MLP",
    "Amortized",
    "AviError",
    "Constant",
    "DataError",
    "DivergenceError",
    "Estimate",
    "Factorized",
    "FamilyError",
    "Fit",
    "History",
    "ModelError",
    "Polynomial",
    "StructureReport",
    "Window",
    "check",
    "fit",
]

__version__ = "0.1.0"
