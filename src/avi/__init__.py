"""avi: amortized variational inference for NumPyro models (Margossian and Blei, 2024)."""

from avi import vi
from avi.amortization_warning import AmortizationWarning, warn_if_not_amortizable
from avi.analysis.aggregate import plot_aggregate_posterior
from avi.analysis.compare import Comparison, compare
from avi.analysis.diagnostics import (
    GeneralizationGap,
    GradientNorm,
    factor_gradient_norm,
    generalization_gap,
    psis_khat,
)
from avi.analysis.per_datum import per_datum_elbo_draws
from avi.analysis.refine import refine
from avi.analysis.loo import loo
from avi.analysis.reliability import Reliability, reliability
from avi.analysis.sweep import Sweep, sweep
from avi.errors import (
    AviError,
    CallbackError,
    ConvergenceWarning,
    DataError,
    DivergenceError,
    FamilyError,
    Interrupted,
    ModelError,
)
from avi.families import (
    Amortized,
    Constant,
    Diagonal,
    Factorized,
    Flow,
    FullRank,
    LowRank,
    Window,
)
from avi.families.encoders import MLP, Polynomial
from avi.fit import fit
from avi.result import Estimate, Fit
from avi.saving import load
from avi.structure import StructureReport, check
from avi.vi import History

__all__ = [
    "MLP",
    "AmortizationWarning",
    "Amortized",
    "AviError",
    "CallbackError",
    "Comparison",
    "Constant",
    "ConvergenceWarning",
    "DataError",
    "Diagonal",
    "DivergenceError",
    "Interrupted",
    "Estimate",
    "Factorized",
    "FamilyError",
    "Fit",
    "Flow",
    "FullRank",
    "GeneralizationGap",
    "GradientNorm",
    "History",
    "LowRank",
    "ModelError",
    "Polynomial",
    "Reliability",
    "StructureReport",
    "Sweep",
    "Window",
    "check",
    "compare",
    "factor_gradient_norm",
    "fit",
    "generalization_gap",
    "load",
    "per_datum_elbo_draws",
    "plot_aggregate_posterior",
    "psis_khat",
    "refine",
    "loo",
    "reliability",
    "sweep",
    "vi",
    "warn_if_not_amortizable",
]

__version__ = "0.1.0"
