"""A-VI: lambda_n = f_phi(x_n), one encoder for every datum (paper, section 2).

Given the globals (Agrawal and Domke 2021), lambda_n = f_phi(x_n, theta): each local factor
q(z_n | theta, x_n) depends on the draw of the unconstrained globals theta, so
q(theta, z) = q(theta) prod_n q(z_n | theta, x_n) holds dependence between theta and the
locals that no factorized family has; it can beat mean-field F-VI (outside Prop. 2.1's
family).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.data.batch import take_rows
from avi.errors import FamilyError
from avi.families.diagonal import Diagonal
from avi.families.encoders import (
    MLP,
    EncoderSpec,
    check_encoder_output,
    check_set_encoder_output,
)
from avi.families.factor import Factor, split_outputs
from avi.families.protocol import LocalData, check_factor
from avi.families.window import Window, free_slots

FREE = "free_"
"""Prefix of the free factors' parameters (data a Window cannot serve, Remark 3.7)."""


@dataclass(frozen=True)
class Amortized:
    """A-VI: q(z_n) = q(z | f_phi(x_n)) with one encoder f_phi for all data.

    Attributes:
        encoder: an encoder spec (:class:`avi.MLP`, :class:`avi.Polynomial`) or an equinox
            Module mapping (F,) features to the factor's parameters (``(loc, log_scale)``,
            each of shape (D_l,), for the diagonal Gaussian). For a grouped model
            (:mod:`avi.data.groups`) a spec builds its set version
            (:class:`avi.families.encoders.SetEncoder`), and a Module is called per group as
            ``encoder(rows, mask)``, rows (S, F) and mask (S,).
        inputs: None (the datum itself) or a :class:`Window` of neighbouring data: the encoder
            sees x_{n+o} for every offset o; a datum lacking a neighbour gets a free factor.
        factor: the factor every datum gets.
        given_globals: the encoder also sees the draw of the unconstrained globals theta
            (appended to the features): q(z_n | theta, x_n). Without theta (the training
            data's :meth:`avi.Fit.posterior`) the factors are taken at q(theta)'s mean.
    """

    encoder: Any = field(default_factory=lambda: MLP(width=32))
    inputs: Window | None = None
    factor: Factor = field(default_factory=Diagonal)
    given_globals: bool = False
    name = "amortized"
    infers_new_data = True
    table_keys = ()

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, (EncoderSpec, eqx.Module)):
            raise FamilyError(
                f"Amortized(encoder={self.encoder!r}): give avi.MLP(width), avi.Polynomial(degree) "
                "or an equinox Module mapping a datum's features to the factor's parameters."
            )
        if self.inputs is not None and not isinstance(self.inputs, Window):
            raise FamilyError(
                f"Amortized(inputs={self.inputs!r}): give None or avi.Window(offsets=(-1, 0))."
            )
        check_factor(self.factor, "Amortized")
        if not isinstance(self.given_globals, bool):
            raise FamilyError(
                f"Amortized(given_globals={self.given_globals!r}): give True or False."
            )

    def __hash__(self) -> int:
        encoder_key = self.encoder if isinstance(self.encoder, EncoderSpec) else id(self.encoder)
        return hash((encoder_key, self.inputs, self.factor, self.given_globals))

    def prepare(self, features: np.ndarray) -> LocalData:
        if features.ndim == 3 and self.inputs is not None:
            raise FamilyError(
                "Amortized(inputs=Window(...)) reads neighbouring data; a grouped model's data "
                "are groups, which have no order: drop inputs."
            )
        if self.inputs is None:
            return LocalData(jnp.asarray(features), jnp.full((features.shape[0],), -1, jnp.int32))
        windowed, complete = self.inputs.apply(features)
        return LocalData(jnp.asarray(windowed), jnp.asarray(free_slots(complete)))

    def init(
        self, key: jax.Array, data: LocalData, local_dim: int, global_dim: int = 0
    ) -> dict[str, Any]:
        grouped = data.features.ndim == 3
        in_size = data.features.shape[-1] - grouped
        if in_size == 0 and not grouped:
            raise FamilyError(
                "Amortized: the encoder would have no input. The data plate holds no observed "
                "site and no per-datum argument (an array with the plate's size along its first "
                "axis), so every datum would get the same factor whatever its data: the data "
                "these latents depend on live in another plate. Choose the plate the "
                "observations live in (plate=...), pass per-datum data of this plate as "
                "arguments, or fit avi.Factorized()."
            )
        if self.given_globals:
            if global_dim == 0:
                raise FamilyError(
                    "Amortized(given_globals=True): the model has no global latents for the "
                    "local factors to depend on; drop given_globals."
                )
            in_size += global_dim
        start = self.factor.init(local_dim)
        if grouped:
            encoder = self._set_encoder(key, in_size, start)
            check_set_encoder_output(encoder, in_size, start)
        else:
            if isinstance(self.encoder, EncoderSpec):
                encoder = self.encoder.build(key, in_size, start)
            else:
                encoder = self.encoder
            check_encoder_output(encoder, in_size, start)
        num_free = int(jnp.sum(data.free_slot >= 0))
        free = {FREE + k: jnp.broadcast_to(v, (num_free, *v.shape)) for k, v in start.items()}
        return {"encoder": encoder, **free}

    def _set_encoder(
        self, key: jax.Array, row_size: int, start: Mapping[str, jax.Array]
    ) -> eqx.Module:
        """The encoder of a group's rows: the spec's set version, or the user's Module."""
        if not isinstance(self.encoder, EncoderSpec):
            return self.encoder
        build_set = getattr(self.encoder, "build_set", None)
        if build_set is None:
            raise FamilyError(
                f"Amortized(encoder={self.encoder!r}) has no set version (build_set) for a "
                "grouped model's variable-size groups: use avi.MLP(width), avi.Polynomial(degree) "
                "or an equinox Module called as encoder(rows, mask)."
            )
        return build_set(key, row_size, start)

    def local_params(
        self,
        params: Mapping[str, Any],
        data: LocalData,
        index: jax.Array | None,
        theta: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        features = data.features if index is None else take_rows(data.features, index)
        if self.given_globals:
            if theta is None:
                raise FamilyError(
                    "Amortized(given_globals=True) factors depend on the globals' draw: pass "
                    "theta (the unconstrained globals, shape (D_g,))."
                )
            given = jnp.broadcast_to(
                theta.astype(features.dtype), (*features.shape[:-1], theta.size)
            )
            features = jnp.concatenate([features, given], axis=-1)
        encoder = params["encoder"]
        if features.ndim == 3:  # a group's rows, channel 0 their mask
            outputs = jax.vmap(lambda rows: encoder(rows[:, 1:], rows[:, 0]))(features)
        else:
            outputs = jax.vmap(encoder)(features)
        lam = split_outputs(self.factor, outputs)
        free = self.free_factors(params)
        if not free or next(iter(free.values())).shape[0] == 0:
            return lam
        slot = data.free_slot if index is None else take_rows(data.free_slot, index)
        use_free, safe = slot >= 0, jnp.maximum(slot, 0)
        return {
            k: jnp.where(use_free.reshape((-1,) + (1,) * (v.ndim - 1)), free[k][safe], v)
            for k, v in lam.items()
        }

    def free_factors(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
        return {k: params[FREE + k] for k in self.factor.parameters if FREE + k in params}
