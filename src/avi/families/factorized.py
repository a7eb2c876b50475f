"""F-VI and the constant family: lambda_n free per datum, or one lambda for every datum."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avi.data.batch import take_rows
from avi.families.diagonal import Diagonal
from avi.families.factor import Factor
from avi.families.protocol import LocalData, check_factor


def no_inputs(features: np.ndarray) -> LocalData:
    """LocalData of a family that reads no features and has no free edge factors."""
    num_data = features.shape[0]
    return LocalData(jnp.zeros((num_data, 0)), jnp.full((num_data,), -1, jnp.int32))


def _rows(start: dict[str, jax.Array], rows: int) -> dict[str, jax.Array]:
    return {k: jnp.broadcast_to(v, (rows, *v.shape)) for k, v in start.items()}


@dataclass(frozen=True)
class Factorized:
    """F-VI: one free factor per datum (2 N D_l parameters for the diagonal Gaussian)."""

    factor: Factor = field(default_factory=Diagonal)
    name = "factorized"
    infers_new_data = False

    def __post_init__(self) -> None:
        check_factor(self.factor, "Factorized")

    @property
    def table_keys(self) -> tuple[str, ...]:
        return tuple(self.factor.parameters)

    def prepare(self, features: np.ndarray) -> LocalData:
        return no_inputs(features)

    def init(
        self, key: jax.Array, data: LocalData, local_dim: int, global_dim: int = 0
    ) -> dict[str, jax.Array]:
        # added to zeros laid out like the data: split over devices as they are, so that each
        # device (and process) creates only its own rows
        zeros = jnp.zeros_like(data.free_slot, dtype=jnp.float32)
        start = self.factor.init(local_dim)
        return {k: zeros.reshape(-1, *(1,) * jnp.ndim(v)) + v for k, v in start.items()}

    def local_params(
        self,
        params: Mapping[str, jax.Array],
        data: LocalData,
        index: jax.Array | None,
        theta: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        if index is None:
            return {k: params[k] for k in self.table_keys}
        return {k: take_rows(params[k], index) for k in self.table_keys}

    def free_factors(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
        return {k: params[k] for k in self.table_keys}


@dataclass(frozen=True)
class Constant:
    """One factor q-bar shared by every datum (the paper's poorest family)."""

    factor: Factor = field(default_factory=Diagonal)
    name = "constant"
    infers_new_data = True
    table_keys = ()

    def __post_init__(self) -> None:
        check_factor(self.factor, "Constant")

    def prepare(self, features: np.ndarray) -> LocalData:
        return no_inputs(features)

    def init(
        self, key: jax.Array, data: LocalData, local_dim: int, global_dim: int = 0
    ) -> dict[str, jax.Array]:
        return self.factor.init(local_dim)

    def local_params(
        self,
        params: Mapping[str, jax.Array],
        data: LocalData,
        index: jax.Array | None,
        theta: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        rows = data.free_slot.shape[0] if index is None else index.size
        return _rows({k: params[k] for k in self.factor.parameters}, rows)

    def free_factors(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
        return {}
