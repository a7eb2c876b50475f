"""avi: amortized variational inference for NumPyro models (Margossian and Blei, 2024).

The analysis names (``compare``, ``sweep``, ``refine``, the diagnostics and plots) are loaded on
first use (PEP 562 module ``__getattr__``), so that ``import avi`` and a first ``avi.fit`` pay for
neither pandas nor matplotlib nor ArviZ. Under jaxlib 0.10.2 it first turns off XLA:CPU's
experimental ynn fusions, which crash on some of avi's programs (:mod:`avi.xla_flags`).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from avi.xla_flags import avoid_known_crashes

avoid_known_crashes()  # before JAX starts its backend (avi.xla_flags)

from avi import vi
from avi.amortization_warning import AmortizationWarning, warn_if_not_amortizable
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

if TYPE_CHECKING:
    from avi.analysis.aggregate import plot_aggregate_posterior
    from avi.analysis.compare import Comparison, compare
    from avi.analysis.diagnostics import (
        GeneralizationGap,
        GradientNorm,
        factor_gradient_norm,
        generalization_gap,
        psis_khat,
    )
    from avi.analysis.loo import loo
    from avi.analysis.per_datum import per_datum_elbo_draws
    from avi.analysis.refine import refine
    from avi.analysis.reliability import Reliability, reliability
    from avi.analysis.sweep import Sweep, sweep

_LAZY: dict[str, str] = {
    "plot_aggregate_posterior": "avi.analysis.aggregate",
    "Comparison": "avi.analysis.compare",
    "compare": "avi.analysis.compare",
    "GeneralizationGap": "avi.analysis.diagnostics",
    "GradientNorm": "avi.analysis.diagnostics",
    "factor_gradient_norm": "avi.analysis.diagnostics",
    "generalization_gap": "avi.analysis.diagnostics",
    "psis_khat": "avi.analysis.diagnostics",
    "loo": "avi.analysis.loo",
    "per_datum_elbo_draws": "avi.analysis.per_datum",
    "refine": "avi.analysis.refine",
    "Reliability": "avi.analysis.reliability",
    "reliability": "avi.analysis.reliability",
    "Sweep": "avi.analysis.sweep",
    "sweep": "avi.analysis.sweep",
}


def __getattr__(name: str) -> Any:
    """Load an analysis name from its module on first access and keep it (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'avi' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones included."""
    return sorted(set(globals()) | set(_LAZY))


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
