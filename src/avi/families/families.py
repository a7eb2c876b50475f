"""Variational families of the local latents (the global factor q(theta) is shared by all).

Every family gives each datum n a Gaussian factor q(z_n) = N(mu_n, diag(sigma_n^2)) in
unconstrained space; they differ in how (mu_n, log sigma_n) are produced (paper, section 2):

* :class:`Factorized` (F-VI): free parameters nu_n per datum, 2 N D_l in all, kept in
  per-datum tables (``table_keys``) that minibatch steps update row by row.
* :class:`Constant`: one shared factor q-bar for every datum (A-VI with a degree-0 encoder).
* :class:`Amortized` (A-VI): nu_n = f_phi(x_n), one encoder for all data (Prop. 2.1: a subset
  of F-VI). With ``inputs=Window(offsets)`` the encoder sees x_{n+o} for every offset o
  (the paper's expanded domain, Eq. 17); a datum lacking a neighbour gets free parameters
  of its own (Remark 3.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.families.encoders import INIT_LOG_SCALE, MLP, EncoderSpec, check_encoder_output
from avi.errors import FamilyError


class LocalData(NamedTuple):
    """Per-datum inputs of a family, derived once from the training data.

    Attributes:
        features: (N, F) encoder inputs (standardized, windowed); (N, 0) when unused.
        free_slot: (N,) index into the free per-datum parameters of data that get their own
            factor (Window edges), -1 for data served by the encoder.
    """

    features: jax.Array
    free_slot: jax.Array


@dataclass(frozen=True)
class Window:
    """Expanded encoder input: the datum and its neighbours at the given offsets.

    ``Window(offsets=(-1, 0))`` feeds (x_{n-1}, x_n), the input that closes the gap on the
    paper's saw time series. Offsets are positions along the data plate.
    """

    offsets: tuple[int, ...] = (-1, 0)

    def __post_init__(self) -> None:
        offsets = tuple(self.offsets)
        if not offsets or not all(isinstance(o, (int, np.integer)) for o in offsets):
            raise FamilyError(f"Window(offsets={self.offsets!r}): give a non-empty tuple of ints.")
        if len(set(offsets)) != len(offsets):
            raise FamilyError(f"Window(offsets={self.offsets!r}) repeats an offset.")
        object.__setattr__(self, "offsets", tuple(int(o) for o in offsets))

    def apply(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stack neighbours' features; return (windowed (N, F*W), complete (N,) mask)."""
        num_data = features.shape[0]
        index = np.arange(num_data)[:, None] + np.asarray(self.offsets)[None, :]
        complete = np.all((index >= 0) & (index < num_data), axis=1)
        gathered = features[np.clip(index, 0, num_data - 1)]
        gathered = np.where(((index >= 0) & (index < num_data))[..., None], gathered, 0.0)
        return gathered.reshape(num_data, -1), complete


def _free_slots(complete: np.ndarray) -> np.ndarray:
    slots = np.full(complete.shape, -1, dtype=np.int32)
    slots[~complete] = np.arange(int((~complete).sum()), dtype=np.int32)
    return slots


def _gather_free(params: dict[str, Any], slot: jax.Array, loc: jax.Array, log_scale: jax.Array):
    use_free = (slot >= 0)[:, None]
    safe = jnp.maximum(slot, 0)
    return (
        jnp.where(use_free, params["free_loc"][safe], loc),
        jnp.where(use_free, params["free_log_scale"][safe], log_scale),
    )


@dataclass(frozen=True)
class Factorized:
    """F-VI: one free Gaussian factor per datum (2 N D_l parameters)."""

    name = "factorized"
    infers_new_data = False
    table_keys = ("loc", "log_scale")
    diagonal_keys = (("loc", "log_scale"),)

    def prepare(self, features: np.ndarray) -> LocalData:
        num_data = features.shape[0]
        return LocalData(jnp.zeros((num_data, 0)), jnp.full((num_data,), -1, jnp.int32))

    def init(self, key: jax.Array, data: LocalData, local_dim: int) -> dict[str, jax.Array]:
        num_data = data.features.shape[0]
        return {
            "loc": jnp.zeros((num_data, local_dim)),
            "log_scale": jnp.full((num_data, local_dim), INIT_LOG_SCALE),
        }

    def local_params(
        self, params: dict[str, jax.Array], data: LocalData, index: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        if index is None:
            return params["loc"], params["log_scale"]
        return params["loc"][index], params["log_scale"][index]


@dataclass(frozen=True)
class Constant:
    """One Gaussian factor q-bar shared by every datum (the paper's poorest family)."""

    name = "constant"
    infers_new_data = True
    table_keys = ()
    diagonal_keys = ()

    def prepare(self, features: np.ndarray) -> LocalData:
        return Factorized().prepare(features)

    def init(self, key: jax.Array, data: LocalData, local_dim: int) -> dict[str, jax.Array]:
        return {"loc": jnp.zeros(local_dim), "log_scale": jnp.full(local_dim, INIT_LOG_SCALE)}

    def local_params(
        self, params: dict[str, jax.Array], data: LocalData, index: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        rows = data.free_slot.shape[0] if index is None else index.shape[0]
        shape = (rows, params["loc"].shape[0])
        return (
            jnp.broadcast_to(params["loc"], shape),
            jnp.broadcast_to(params["log_scale"], shape),
        )


@dataclass(frozen=True)
class Amortized:
    """A-VI: q(z_n) = N(f_phi(x_n)) with one encoder f_phi for all data.

    Attributes:
        encoder: an encoder spec (:class:`avi.MLP`, :class:`avi.Polynomial`) or an equinox
            Module mapping (F,) features to (loc, log_scale), each of shape (D_l,).
        inputs: None (the datum itself) or a :class:`Window` of neighbouring data.
    """

    encoder: Any = MLP(width=32)
    inputs: Window | None = None
    name = "amortized"
    infers_new_data = True
    table_keys = ()
    diagonal_keys = (("free_loc", "free_log_scale"),)

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, (EncoderSpec, eqx.Module)):
            raise FamilyError(
                f"Amortized(encoder={self.encoder!r}): give avi.MLP(width), avi.Polynomial(degree) "
                "or an equinox Module mapping a datum's features to (loc, log_scale)."
            )
        if self.inputs is not None and not isinstance(self.inputs, Window):
            raise FamilyError(
                f"Amortized(inputs={self.inputs!r}): give None or avi.Window(offsets=(-1, 0))."
            )

    def __hash__(self) -> int:
        encoder_key = self.encoder if isinstance(self.encoder, EncoderSpec) else id(self.encoder)
        return hash((encoder_key, self.inputs))

    def prepare(self, features: np.ndarray) -> LocalData:
        if self.inputs is None:
            return LocalData(jnp.asarray(features), jnp.full((features.shape[0],), -1, jnp.int32))
        windowed, complete = self.inputs.apply(features)
        return LocalData(jnp.asarray(windowed), jnp.asarray(_free_slots(complete)))

    def init(self, key: jax.Array, data: LocalData, local_dim: int) -> dict[str, Any]:
        in_size = data.features.shape[1]
        if isinstance(self.encoder, EncoderSpec):
            encoder = self.encoder.build(key, in_size, local_dim)
        else:
            encoder = self.encoder
        check_encoder_output(encoder, in_size, local_dim)
        num_free = int(jnp.sum(data.free_slot >= 0))
        return {
            "encoder": encoder,
            "free_loc": jnp.zeros((num_free, local_dim)),
            "free_log_scale": jnp.full((num_free, local_dim), INIT_LOG_SCALE),
        }

    def local_params(
        self, params: dict[str, Any], data: LocalData, index: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        features = data.features if index is None else data.features[index]
        slot = data.free_slot if index is None else data.free_slot[index]
        loc, log_scale = jax.vmap(params["encoder"])(features)
        if params["free_loc"].shape[0] == 0:
            return loc, log_scale
        return _gather_free(params, slot, loc, log_scale)


Family = Factorized | Constant | Amortized

_FAMILY_NAMES = {"factorized": Factorized, "constant": Constant, "amortized": Amortized}


def as_family(family: Any) -> Family:
    """Accept a family object or one of the strings 'factorized', 'constant', 'amortized'.

    Raises:
        FamilyError: anything else.
    """
    if isinstance(family, (Factorized, Constant, Amortized)):
        return family
    if isinstance(family, str) and family.lower() in _FAMILY_NAMES:
        return _FAMILY_NAMES[family.lower()]()
    raise FamilyError(
        f"family={family!r} is not a variational family; give avi.Factorized(), avi.Constant(), "
        "avi.Amortized(encoder) or one of 'factorized', 'constant', 'amortized'."
    )


def count_parameters(params: Any) -> int:
    """Number of scalar variational parameters in a pytree."""
    return sum(
        int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_array))
    )
