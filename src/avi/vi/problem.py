"""What a step optimises: the model, its layout, the family and the data, as one pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax

from avi.data.prepare import Prepared
from avi.data.shard import process_rows
from avi.families import Family
from avi.model import ModelLayout
from avi.model.params import initial_model_params


class VariationalParams(NamedTuple):
    """All parameters a fit optimises: q(theta) = N(global_loc, diag(exp(global_log_scale)^2)),
    the family's local parameters, and the model's learned parameters (``numpyro.param`` and
    ``numpyro.contrib.module`` sites; :mod:`avi.model.params`) as unconstrained leaves per
    site, empty when the model has none. They are not variational parameters but are learned
    with them, by maximising the same ELBO."""

    global_loc: jax.Array
    global_log_scale: jax.Array
    local: Any
    model: dict[str, tuple[jax.Array, ...]] = {}  # noqa: RUF012 (never mutated: replaced)


class Problem(eqx.Module):
    """Everything the compiled ELBO needs: static model description plus data arrays.

    The static part (model, layout, family) is hashed by ``equinox.filter_jit``, so a second
    fit of the same model with data of the same shapes reuses the compiled program.
    """

    model: Callable[..., Any] = eqx.field(static=True)
    layout: ModelLayout = eqx.field(static=True)
    family: Family = eqx.field(static=True)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    local_data: Any
    model_init: dict[str, tuple[jax.Array, ...]] = eqx.field(default_factory=dict)
    """The learned parameters' starting values (unconstrained leaves per site): the model's own
    initial values, as NumPyro's SVI starts from them."""


def problem_for(prepared: Prepared, family: Family) -> Problem:
    """The problem of prepared data under a family (its per-datum inputs from the features;
    split over the processes when the features are one process's rows)."""
    traced = prepared.traced
    local_data = family.prepare(prepared.features)
    if prepared.rows != slice(None):  # this process's rows of data split over processes
        local_data = process_rows(local_data, traced.layout.num_data, prepared.mesh)
    model_init = initial_model_params(traced.layout.params, traced.trace)
    return Problem(
        traced.model, traced.layout, family, prepared.args, prepared.kwargs, local_data, model_init
    )
