"""Inference functions f_phi: a datum's features -> (loc, log_scale) of its Gaussian factor.

An encoder *spec* (:class:`MLP`, :class:`Polynomial`) is a small frozen description; it
builds an equinox Module once the input and output sizes are known from the traced model.
A user may also pass any equinox Module mapping a feature vector of shape (F,) to a pair of
arrays of shape (D_l,) each; it is used as given.

Initialisation. An encoder starts *data-dependent* and at the factor every family starts from.
The hidden layers and the output layer's location head keep equinox's default weights
(U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's Linear default); the log-scale head's weights are
that default times ``LOG_SCALE_WEIGHT_INIT`` (0.1); the output biases are loc 0 and log-scale
``INIT_LOG_SCALE``. On the standardized digits of the deep generative experiment a fresh MLP of
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp

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

INIT_LOG_SCALE = math.log(0.1)
"""Every factor starts at scale 0.1 in unconstrained space, as NumPyro's AutoNormal does."""

LOG_SCALE_WEIGHT_INIT = 0.1
"""The MLP's log-scale head starts at equinox's default weights times this: its output depends on
the datum, yet every scale starts within about 12% of exp(INIT_LOG_SCALE) = 0.1."""


@runtime_checkable
class EncoderSpec(Protocol):
    """Anything that builds an encoder Module for given sizes."""

    def build(self, key: jax.Array, in_size: int, out_size: int) -> eqx.Module:
        """Build the Module mapping (in_size,) features to two (out_size,) arrays."""
        ...


class MLPEncoder(eqx.Module):
    """loc, log_scale = split(MLP(x)): ``depth`` hidden layers of ``width`` units."""

    mlp: eqx.nn.MLP
    out_size: int = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.mlp(x)
        return out[: self.out_size], out[self.out_size :]


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
        if not isinstance(self.width, int) or self.width < 1:
            raise FamilyError(f"MLP(width={self.width!r}): width must be a positive integer.")
        if not isinstance(self.depth, int) or self.depth < 0:
            raise FamilyError(f"MLP(depth={self.depth!r}): depth must be a non-negative integer.")
        if self.activation not in ACTIVATIONS:
            raise FamilyError(
                f"MLP(activation={self.activation!r}) is unknown; choose one of "
                f"{', '.join(sorted(ACTIVATIONS))}."
            )

    def build(self, key: jax.Array, in_size: int, out_size: int) -> MLPEncoder:
        mlp = eqx.nn.MLP(
            in_size=in_size,
            out_size=2 * out_size,
            width_size=self.width,
            depth=self.depth,
            activation=ACTIVATIONS[self.activation],
            key=key,
        )
        # Default weights, so that the outputs depend on the datum (see the module docstring);
        # the log-scale head's scaled down; biases at loc 0 and log-scale INIT_LOG_SCALE.
        last = mlp.layers[-1]
        weight = last.weight.at[out_size:].multiply(LOG_SCALE_WEIGHT_INIT)
        bias = jnp.zeros_like(last.bias).at[out_size:].set(INIT_LOG_SCALE)
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, (weight, bias))
        return MLPEncoder(mlp=mlp, out_size=out_size)


class PolynomialEncoder(eqx.Module):
    """loc = b + W [x, x^2, ..., x^d] (powers taken per feature); log_scale shared by all data."""

    weight: jax.Array
    bias: jax.Array
    log_scale: jax.Array
    degree: int = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        powers = (
            jnp.concatenate([x**k for k in range(1, self.degree + 1)]) if self.degree else x[:0]
        )
        return self.bias + self.weight @ powers, self.log_scale


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
        if not isinstance(self.degree, int) or self.degree < 0:
            raise FamilyError(
                f"Polynomial(degree={self.degree!r}): degree must be a non-negative integer."
            )

    def build(self, key: jax.Array, in_size: int, out_size: int) -> PolynomialEncoder:
        fan_in = in_size * self.degree
        bound = 1.0 / math.sqrt(max(fan_in, 1))  # equinox's (and PyTorch's) Linear default
        weight = jax.random.uniform(key, (out_size, fan_in), minval=-bound, maxval=bound)
        return PolynomialEncoder(
            weight=weight,
            bias=jnp.zeros(out_size),
            log_scale=jnp.full(out_size, INIT_LOG_SCALE),
            degree=self.degree,
        )


def check_encoder_output(encoder: eqx.Module, in_size: int, out_size: int) -> None:
    """Call the encoder on one zero feature vector and check it returns two (out_size,) arrays.

    Raises:
        FamilyError: the encoder fails or returns the wrong shapes.
    """
    try:
        out = eqx.filter_eval_shape(encoder, jax.ShapeDtypeStruct((in_size,), jnp.float32))
    except Exception as error:  # the user's module can raise anything
        raise FamilyError(
            f"The encoder failed on a feature vector of shape ({in_size},): {error}. Each datum's "
            f"features (its observed values and per-datum arguments, flattened) have {in_size} entries."
        ) from error
    shapes = [getattr(o, "shape", None) for o in out] if isinstance(out, tuple) else None
    if shapes != [(out_size,), (out_size,)]:
        raise FamilyError(
            f"The encoder must return (loc, log_scale), each of shape ({out_size},) (the number of "
            f"unconstrained local coordinates per datum); it returned {shapes or type(out).__name__}."
        )
