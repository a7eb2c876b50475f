"""Python control flow on a latent's value: a clear error instead of JAX's tracer error.

The model is traced once with concrete values (so ``if theta > 0`` runs), but the ELBO is
compiled with latents as JAX tracers, where Python's ``if``, ``while``, ``int()`` or
``float()`` of a latent cannot be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import jax

from avi.errors import ModelError

__all__ = ["latent_control_flow"]


@contextmanager
def latent_control_flow() -> Iterator[None]:
    """Turn JAX's concretization errors raised while compiling the model into a ModelError.

    Raises:
        ModelError: the model branches in Python on a latent's (or a traced) value.
    """
    try:
        yield
    except jax.errors.ConcretizationTypeError as error:
        raise ModelError(
            "The model uses a latent's value in Python control flow (an `if`, `while`, `int()` "
            "or `float()` of a sampled value), which cannot be compiled: avi differentiates the "
            "model with the latents as JAX tracers. Write the branch with jnp.where(cond, a, b) "
            "or jax.lax.cond, and loops with jax.lax.fori_loop/scan. JAX's message: "
            f"{str(error).splitlines()[0]}"
        ) from error
