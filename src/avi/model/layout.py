"""The static description of a traced model: where each latent site lives in the flat vectors.

Every latent site is fitted in unconstrained space, as ADVI does. The globals form one flat
vector theta_u of shape (D_g,); the locals of a batch of B data one matrix z_u of shape (B, D_l).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

from avi.model.params import ParamLayout

Model = Callable[..., Any]


@dataclass(frozen=True)
class SiteLayout:
    """Where one latent site lives in the flat variational vectors.

    Attributes:
        name: the NumPyro site name.
        shape: constrained value shape; for a local site, of one datum (data plate removed).
        unconstrained_shape: shape of the unconstrained value, per datum for a local site.
        event_dim: number of event dimensions of the site's distribution.
        plate_axis: for a local site, the axis of the data plate in the full value; else None.
        offset: first index of the site in the flat (per-datum) unconstrained vector.
        size: number of unconstrained coordinates (per datum for a local site).
    """

    name: str
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    event_dim: int
    plate_axis: int | None
    offset: int
    size: int


@dataclass(frozen=True)
class ModelLayout:
    """The static description of a traced model; hashable, so compiled programs can be reused.

    Attributes:
        plate: name of the data plate.
        num_data: N, the data plate's size for the traced arguments.
        globals: layouts of the global latent sites, in model order.
        locals: layouts of the local latent sites, in model order.
        observed: names of the observed sites inside the data plate.
        per_datum_args: positions of the positional arguments that are per-datum arrays.
        per_datum_kwargs: names of the keyword arguments that are per-datum arrays.
        params: the learned parameter sites (``numpyro.param``, ``numpyro.contrib.module``).
    """

    plate: str
    num_data: int
    globals: tuple[SiteLayout, ...]
    locals: tuple[SiteLayout, ...]
    observed: tuple[str, ...]
    per_datum_args: tuple[int, ...]
    per_datum_kwargs: tuple[str, ...]
    params: tuple[ParamLayout, ...] = ()

    @property
    def global_dim(self) -> int:
        """D_g: the number of unconstrained global coordinates."""
        return sum(s.size for s in self.globals)

    @property
    def local_dim(self) -> int:
        """D_l: the number of unconstrained local coordinates of one datum."""
        return sum(s.size for s in self.locals)

    @property
    def param_dim(self) -> int:
        """The number of unconstrained learned model parameters."""
        return sum(p.size for p in self.params)


@dataclass(frozen=True)
class TracedModel:
    """A model traced on concrete arguments: its layout plus what is not hashable.

    Attributes:
        model: the user's NumPyro model.
        layout: the static layout.
        supports: site name -> NumPyro constraint of every latent site.
        observed_values: observed in-plate site name -> array with the data axis first.
        trace: the NumPyro trace of the run (sites and plates), for structure analysis.
    """

    model: Model
    layout: ModelLayout
    supports: Mapping[str, constraints.Constraint]
    observed_values: Mapping[str, np.ndarray]
    trace: Mapping[str, Any]


def unflatten_globals(layout: ModelLayout, theta: jax.Array) -> dict[str, jax.Array]:
    """Split the flat unconstrained global vector (D_g,) into site arrays."""
    return {
        s.name: theta[s.offset : s.offset + s.size].reshape(s.unconstrained_shape)
        for s in layout.globals
    }


def unflatten_locals(layout: ModelLayout, z: jax.Array) -> dict[str, jax.Array]:
    """Split the flat unconstrained local matrix (B, D_l) into site arrays in model layout."""
    values = {}
    for s in layout.locals:
        block = z[:, s.offset : s.offset + s.size].reshape((z.shape[0],) + s.unconstrained_shape)
        values[s.name] = jnp.moveaxis(block, 0, s.plate_axis)
    return values
