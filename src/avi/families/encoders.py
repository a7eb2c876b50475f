"""Inference functions f_phi: a datum's features -> the parameters lambda_n of its factor.

An encoder *spec* (:class:`MLP`, :class:`Polynomial`) is a small frozen description; it
builds an equinox Module once the input and output sizes are known from the traced model.
A user may also pass any equinox Module mapping a feature vector of shape (F,) to a tuple of
arrays, one per part of the factor's parameters (:attr:`avi.families.factor.Factor.parameters`;
``(loc, log_scale)``, each of shape (D_l,), for the diagonal Gaussian); it is used as given.

Initialisation. An encoder starts *data-dependent* and at the factor every family starts from.
The hidden layers and the output layer's location head (the factor's first part) keep
equinox's default weights (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's Linear default); the
other heads' weights (the log-scale's, for the diagonal Gaussian) are that default times
``LOG_SCALE_WEIGHT_INIT`` (0.1); the output biases are the factor's starting parameters (loc 0,
log-scale ``INIT_LOG_SCALE``). On the standardized digits of the deep generative experiment a fresh MLP of
width 5 to 64 then gives locs that vary across the data with sd 0.07-0.08, and scales that
still depend on the datum yet stay within 12% of 0.1. :class:`Polynomial` weights start at the same
default for their fan-in (its scale is shared by every datum, 0.1 at the start).

Why, measured. The output weights used to be scaled by 0.01 (loc sd ~0.001 across the data):
every datum started from nearly the same factor, a collapsed encoder, and a fit could stay
there. On the deep generative experiment at its "quick" size (10,000 iterations), seeds 0-2,
with q(theta) started at scale 0.1, the encoders of width 5 and 10 (the paper's 64 and 128)
ended reconstructing every image as the mean image in 5 of 6 fits (training MSE 0.0730 against
the mean image's 0.0729, ELBO about -9,700); with this start none of the 9 fits of widths 5, 10,
21 did (MSE 0.034-0.055). With q(theta)'s scales started from the curvature
(:mod:`avi.vi.initialize`) neither start collapses on those seeds, and this one ends higher:
mean ELBO -2,631 / -1,572 / -683 for widths 5 / 10 / 21 against -4,218 / -2,925 / -1,718 (MSE
0.026-0.041 against 0.031-0.054). Equinox's default for the whole output layer, log-scale bias
included (scales near 1), collapsed in 3 of 9 fits (first setting); default log-scale weights
with the bias at ``INIT_LOG_SCALE`` (scales roughly 0.07-0.14) in none, as this start; the small
log-scale weights keep every family's start at one scale, 0.1. The linear and nonlinear
experiments' gaps and verdicts (quick size) do not move beyond the spread over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from avi.errors import FamilyError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.2),
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
}

LOG_SCALE_WEIGHT_INIT = 0.1
"""The MLP's heads after the first (the log-scale's) start at equinox's default weights times
this: their output depends on the datum, yet every scale starts within about 12% of 0.1."""


@runtime_checkable
class EncoderSpec(Protocol):
    """Anything that builds an encoder Module once the sizes are known."""

    def build(self, key: jax.Array, in_size: int, start: Mapping[str, jax.Array]) -> eqx.Module:
        """Build the Module mapping (in_size,) features to one array per part of ``start`` (the
        factor's starting parameters of one datum, in the factor's order), of the same shapes."""
        ...


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (raw uint32 or typed), read on the host."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).ravel().tolist())


def default_mlp(key: jax.Array, **sizes: Any) -> eqx.nn.MLP:
    """``eqx.nn.MLP(**sizes, key=key)`` with every Linear at equinox's default law (weights and
    biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn by NumPy from ``key``: the structure
    comes from ``eqx.filter_eval_shape`` and no JAX operation runs. Built op by op, each random
    operation compiled on first use, a fresh process spent 1.1-1.4 s on the default MLP(32)
    (2.4-2.7 s with the other core busy, against 0.09-0.22 s this way)."""
    shape = eqx.filter_eval_shape(lambda: eqx.nn.MLP(**sizes, key=jax.random.PRNGKey(0)))
    rng = numpy_rng(key)

    def draw(layer: eqx.nn.Linear) -> eqx.nn.Linear:
        bound = 1 / math.sqrt(layer.weight.shape[1])
        weight, bias = (
            jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype))
            for leaf in (layer.weight, layer.bias)
        )
        return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (weight, bias))

    return eqx.tree_at(lambda m: m.layers, shape, tuple(draw(layer) for layer in shape.layers))


def _heads(start: Mapping[str, jax.Array]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(np.shape(v)) for v in start.values())


def _split(flat: jax.Array, shapes: tuple[tuple[int, ...], ...]) -> tuple[jax.Array, ...]:
    sizes = np.cumsum([math.prod(s) for s in shapes])[:-1]
    return tuple(p.reshape(s) for p, s in zip(jnp.split(flat, sizes), shapes, strict=True))



def _int_field(module: Any, name: str) -> None:
    """Store a numpy integer field (``np.int64(16)``) as a Python int; others stay for the
    caller's check."""
    value = getattr(module, name)
    if isinstance(value, np.integer):
        object.__setattr__(module, name, int(value))

class MLPEncoder(eqx.Module):
    """lambda = split(MLP(x)): ``depth`` hidden layers of ``width`` units, one head per part."""

    mlp: eqx.nn.MLP
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        return _split(self.mlp(x), self.shapes)


@dataclass(frozen=True)
class MLP:
    """Multilayer perceptron encoder (the paper's nonlinear and time-series experiments).

    Attributes:
        width: units per hidden layer (the paper's k).
        depth: number of hidden layers (the paper uses 2).
        activation: one of ``ACTIVATIONS`` ("relu", "leaky_relu" with slope 0.2, "tanh", ...).
    """

    width: int
    depth: int = 2
    activation: str = "relu"

    def __post_init__(self) -> None:
        _int_field(self, "width")
        _int_field(self, "depth")
        if not isinstance(self.width, int) or self.width < 1:
            raise FamilyError(f"MLP(width={self.width!r}): width must be a positive integer.")
        if not isinstance(self.depth, int) or self.depth < 0:
            raise FamilyError(f"MLP(depth={self.depth!r}): depth must be a non-negative integer.")
        if self.activation not in ACTIVATIONS:
            raise FamilyError(
                f"MLP(activation={self.activation!r}) is unknown; choose one of "
                f"{', '.join(sorted(ACTIVATIONS))}."
            )

    def build(self, key: jax.Array, in_size: int, start: Mapping[str, jax.Array]) -> MLPEncoder:
        shapes = _heads(start)
        first = math.prod(shapes[0])
        mlp = default_mlp(
            key,
            in_size=in_size,
            out_size=sum(math.prod(s) for s in shapes),
            width_size=self.width,
            depth=self.depth,
            activation=ACTIVATIONS[self.activation],
        )
        # Default weights, so that the outputs depend on the datum (see the module docstring);
        # the heads after the first scaled down; biases at the factor's start.
        last = mlp.layers[-1]
        weight = last.weight.at[first:].multiply(LOG_SCALE_WEIGHT_INIT)
        bias = jnp.concatenate([jnp.ravel(v) for v in start.values()]).astype(last.bias.dtype)
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, (weight, bias))
        return MLPEncoder(mlp=mlp, shapes=shapes)

    def build_set(self, key: jax.Array, row_size: int, start: Mapping[str, jax.Array]) -> SetEncoder:
        """A DeepSets encoder of a group's rows: phi is one hidden layer of ``width`` units,
        rho this MLP on the pooled statistics (:class:`SetEncoder`)."""
        phi_key, rho_key = jax.random.split(key)
        activation = ACTIVATIONS[self.activation]
        phi = default_mlp(
            phi_key,
            in_size=row_size,
            out_size=self.width,
            width_size=self.width,
            depth=1,
            activation=activation,
            final_activation=activation,
        )
        return SetEncoder(rho=self.build(rho_key, row_size + self.width + 1, start), phi=phi)


class PolynomialEncoder(eqx.Module):
    """First part = b + W [x, x^2, ..., x^d] (powers taken per feature); the other parts (the
    log-scale, for the diagonal Gaussian) shared by all data."""

    weight: jax.Array
    bias: jax.Array
    shared: tuple[jax.Array, ...]
    degree: int = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        powers = (
            jnp.concatenate([x**k for k in range(1, self.degree + 1)]) if self.degree else x[:0]
        )
        return (self.bias + self.weight @ powers, *self.shared)


@dataclass(frozen=True)
class Polynomial:
    """Polynomial mean of the datum with one learned scale shared by every datum.

    The paper's class for the linear model (Prop. 3.6): degree 1 holds the ideal inference
    function E[z_n] = tau / (sigma^2 + tau^2) (x_n - xbar) with constant variance; degree 0 is
    the constant-factor family. Powers are taken feature by feature (no cross terms).

    Attributes:
        degree: highest power of the datum in the mean.
    """

    degree: int

    def __post_init__(self) -> None:
        _int_field(self, "degree")
        if not isinstance(self.degree, int) or self.degree < 0:
            raise FamilyError(
                f"Polynomial(degree={self.degree!r}): degree must be a non-negative integer."
            )

    def build(
        self, key: jax.Array, in_size: int, start: Mapping[str, jax.Array]
    ) -> PolynomialEncoder:
        first, *rest = start.values()
        if jnp.ndim(first) != 1:
            raise FamilyError("Polynomial encoders need a factor whose first part is a vector.")
        fan_in = in_size * self.degree
        bound = 1.0 / math.sqrt(max(fan_in, 1))  # equinox's (and PyTorch's) Linear default
        weight = numpy_rng(key).uniform(-bound, bound, (first.shape[0], fan_in))
        weight = jnp.asarray(weight.astype(jnp.result_type(float)))
        return PolynomialEncoder(
            weight=weight, bias=jnp.asarray(first), shared=tuple(rest), degree=self.degree
        )

    def build_set(self, key: jax.Array, row_size: int, start: Mapping[str, jax.Array]) -> SetEncoder:
        """This polynomial of a group's pooled statistics (the rows' mean and log(1 + n_j);
        :class:`SetEncoder` without phi)."""
        return SetEncoder(rho=self.build(key, row_size + 1, start), phi=None)


class SetEncoder(eqx.Module):
    """A permutation-invariant encoder of a group's rows (DeepSets, Zaheer et al. 2017):

        lambda_j = rho(mean_s phi(x_js), mean_s x_js, log(1 + n_j)),

    means over the group's n_j real rows (mask 1), so that a group of one row and one of a
    hundred are read alike and its size is an input. The raw mean is kept beside phi's, so that
    the sufficient statistics of linear-Gaussian groups reach rho unchanged.

    Any equinox Module with this call signature, ``encoder(rows, mask)`` with rows (S, F) and
    mask (S,) returning one array per factor part, can be passed as a grouped model's encoder.
    """

    rho: eqx.Module
    phi: eqx.Module | None

    def __call__(self, rows: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
        count = jnp.sum(mask)
        weight = mask / jnp.maximum(count, 1.0)
        pooled = [weight @ rows]
        if self.phi is not None:
            pooled.append(weight @ jax.vmap(self.phi)(rows))
        pooled.append(jnp.log1p(count)[None])
        return self.rho(jnp.concatenate(pooled))


def _check_parts(out: Any, start: Mapping[str, jax.Array]) -> None:
    shapes = [getattr(o, "shape", None) for o in out] if isinstance(out, tuple) else None
    expected = [tuple(np.shape(v)) for v in start.values()]
    if shapes != expected:
        names = ", ".join(start)
        wanted = ", ".join(f"{n} {s}" for n, s in zip(start, expected, strict=True))
        raise FamilyError(
            f"The encoder must return ({names}), of shapes {wanted} (the factor's parameters for "
            f"one datum's unconstrained local coordinates); it returned "
            f"{shapes or type(out).__name__}."
        )


def check_set_encoder_output(
    encoder: eqx.Module, row_size: int, start: Mapping[str, jax.Array]
) -> None:
    """Call a set encoder on one group of two rows and check its output (as
    :func:`check_encoder_output`).

    Raises:
        FamilyError: the encoder fails or returns the wrong shapes.
    """
    rows = jax.ShapeDtypeStruct((2, row_size), jnp.float32)
    mask = jax.ShapeDtypeStruct((2,), jnp.float32)
    try:
        out = eqx.filter_eval_shape(encoder, rows, mask)
    except Exception as error:  # the user's module can raise anything
        raise FamilyError(
            f"The set encoder failed on a group's rows of shape (S, {row_size}) and mask (S,): "
            f"{str(error).rstrip('.')}. A grouped model's encoder is called as encoder(rows, mask) per group "
            "(see avi.families.encoders.SetEncoder)."
        ) from error
    _check_parts(out, start)


def check_encoder_output(encoder: eqx.Module, in_size: int, start: Mapping[str, jax.Array]) -> None:
    """Call the encoder on one zero feature vector and check it returns one array per part of
    the factor's parameters, of the starting parameters' shapes.

    Raises:
        FamilyError: the encoder fails or returns the wrong shapes.
    """
    try:
        out = eqx.filter_eval_shape(encoder, jax.ShapeDtypeStruct((in_size,), jnp.float32))
    except Exception as error:  # the user's module can raise anything
        raise FamilyError(
            f"The encoder failed on a feature vector of shape ({in_size},): "
            f"{str(error).rstrip('.')}. Each datum's "
            f"features (its observed values and per-datum arguments, flattened) have {in_size} entries."
        ) from error
    _check_parts(out, start)
