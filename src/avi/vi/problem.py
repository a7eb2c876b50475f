"""What a step optimises: the model, its layout, the family and the data, as one pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax

from avi.data.prepare import Prepared
from avi.families import Family
from avi.model import ModelLayout


class VariationalParams(NamedTuple):
    """All variational parameters: q(theta) = N(global_loc, diag(exp(global_log_scale)^2))
    and the family's local parameters."""

    global_loc: jax.Array
    global_log_scale: jax.Array
    local: Any


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


def problem_for(prepared: Prepared, family: Family) -> Problem:
    """The problem of prepared data under a family (its per-datum inputs from the features)."""
    traced = prepared.traced
    local_data = family.prepare(prepared.features)
    return Problem(traced.model, traced.layout, family, prepared.args, prepared.kwargs, local_data)
