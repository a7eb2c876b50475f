"""``avi.check``: the verdict of Theorem 3.4 / Proposition 3.8 read from a model's structure."""

from __future__ import annotations

from typing import Any

import jax
import numpyro

from avi.model import Model, trace_model
from avi.structure.dependencies import dependencies, local_window
from avi.structure.probes import design_for
from avi.structure.problem import analysed_problem
from avi.structure.report import (
    StructureReport,
    coupled_report,
    no_locals_report,
    window_report,
)


def check(model: Model, *args: Any, plate: str | None = None, **kwargs: Any) -> StructureReport:
    """Tell whether amortized VI can reach factorized VI's optimum on ``model(*args, **kwargs)``.

    The decision follows the dependency structure of the optimal CAVI factors q*(z_n)
    (Lemma 3.1): simple hierarchical models (Definition 3.3) admit an ideal inference function
    of the datum (Theorem 3.4); models whose factors depend on the data at fixed offsets admit one
    of a window of data (expanded domain, as the saw model); models with coupled local latents or
    dense dependencies admit none short of all the data (Proposition 3.8). See the docstring of
    :mod:`avi.structure` for how the structure is measured; names of sites play no role.

    Args:
        model: a NumPyro model with a data plate, written with jax.numpy (traceable in its
            arguments, as :func:`avi.fit` requires).
        *args: the model's positional arguments.
        plate: name of the data plate, if the automatic choice must be overridden.
        **kwargs: the model's keyword arguments.

    Returns:
        The verdict, the encoder's input offsets and an explanation.

    Raises:
        ModelError: no usable data plate, a discrete latent, a numpyro.param, a failing model,
            one that JAX cannot trace, or a log density that is not finite at random points.
        DataError: non-finite data.
    """
    layout = trace_model(model, args, kwargs, plate).layout
    with jax.enable_x64(True), numpyro.validation_enabled(False):
        problem = analysed_problem(model, args, kwargs, layout)
        if not problem.locals:
            return no_locals_report(problem)
        coupling, data = dependencies(problem, design_for(problem.size))
    if coupling:
        return coupled_report(problem, coupling)
    windows = [
        local_window(name, [e for e in data if e.local == name], problem.size)
        for name in problem.locals
    ]
    return window_report(problem, windows)
