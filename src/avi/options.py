"""Type checks of ``avi.fit``'s options, and the callback guard.

Every option is checked before anything is traced or compiled, so that a wrong value is a clear
:class:`avi.AviError` naming the option and the fix, never a silent default (``progress="no"``
is not True) or a traceback after the fit has run. numpy scalars (``np.int64(5)``,
``np.float32(1e-3)``) are accepted where Python ints and floats are.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from avi.errors import AviError, CallbackError

__all__ = [
    "SEED_LIMIT",
    "GuardedCallback",
    "check_bool",
    "check_callback",
    "check_devices",
    "check_seed",
    "check_steps",
    "check_tol",
    "positive_int",
]

SEED_LIMIT = 2**32
"""Seeds are below this: JAX's PRNGKey keeps 32 bits of a seed when 64-bit mode is off, so
larger seeds would silently collide with smaller ones."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer (numpy integers included).

    Raises:
        AviError: it is not.
    """
    if not _is_int(value) or value < 1:
        raise AviError(f"{name}={value!r}: give a positive integer.")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an int if it is an integer >= 0 (numpy integers included).

    Raises:
        AviError: it is not.
    """
    if not _is_int(value) or value < 0:
        raise AviError(f"{name}={value!r}: give an integer >= 0.")
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int in [0, 2**32).

    Raises:
        AviError: a string, float, None, JAX key, negative or too large integer.
    """
    if isinstance(seed, jax.Array) or (isinstance(seed, np.ndarray) and seed.ndim):
        raise AviError(
            f"{name} is an array (a JAX random key?); avi takes an integer seed and splits its "
            f"own keys: give e.g. {name}=0."
        )
    if not _is_int(seed):
        raise AviError(f"{name}={seed!r}: give a non-negative integer, e.g. {name}=0.")
    if not 0 <= seed < SEED_LIMIT:
        raise AviError(
            f"{name}={seed!r}: give an integer in [0, 2**32); JAX keeps 32 bits of a seed, so "
            "larger ones would collide with smaller ones."
        )
    return int(seed)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a real bool (``"no"`` is not False).

    Raises:
        AviError: anything else.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise AviError(f"{name}={value!r}: give True or False.")
    return bool(value)


def check_tol(tol: Any) -> float:
    """``tol`` as a finite positive float.

    Raises:
        AviError: not a real number, not positive, or not finite (inf would stop at once).
    """
    if not isinstance(tol, (int, float, np.integer, np.floating)) or isinstance(
        tol, (bool, np.bool_)
    ):
        raise AviError(f"tol={tol!r}: give a finite positive number, e.g. tol=1e-4.")
    if not (math.isfinite(float(tol)) and tol > 0):
        raise AviError(
            f"tol={tol!r}: give a finite positive number (e.g. 1e-4); for a fixed number of "
            "steps give num_steps=... instead."
        )
    return float(tol)


def check_steps(num_steps: Any, max_steps: Any, tol: Any, anneal: Any) -> None:
    """``num_steps`` (fixed) excludes the stop rule's options.

    Raises:
        AviError: ``max_steps``, ``tol`` or ``anneal`` given beside ``num_steps``.
    """
    if num_steps is None:
        return
    given = [
        n for n, v in (("max_steps", max_steps), ("tol", tol), ("anneal", anneal)) if v is not None
    ]
    if given:
        raise AviError(
            f"num_steps={num_steps!r} runs exactly that many steps and turns the stop rule off, "
            f"so {' and '.join(given)} would be ignored: give num_steps alone, or drop it and "
            "let the stop rule decide (max_steps, tol, anneal)."
        )


def check_devices(devices: Any) -> list[jax.Device] | None:
    """``devices`` as a non-empty list of distinct ``jax.Device`` (None: avi chooses).

    Raises:
        AviError: not a sequence, empty, a non-device entry (e.g. the string "cpu"), or a
            device listed twice.
    """
    if devices is None:
        return None
    if isinstance(devices, (str, bytes, jax.Device)) or not isinstance(devices, Sequence):
        raise AviError(
            f"devices={devices!r}: give a list of JAX devices, e.g. devices=jax.devices()."
        )
    chosen = list(devices)
    if not chosen:
        raise AviError("devices=[]: give at least one device (e.g. jax.devices()), or None.")
    for device in chosen:
        if not isinstance(device, jax.Device):
            raise AviError(
                f"devices: {device!r} is not a JAX device; give device objects, e.g. "
                "devices=jax.devices('cpu')."
            )
    if len({id(d) for d in chosen}) != len(chosen):
        raise AviError(f"devices={chosen!r} lists a device more than once; list each once.")
    return chosen


def check_callback(callback: Any) -> None:
    """``callback`` must be callable as ``callback(step, params, problem)``.

    Raises:
        AviError: not callable, or its signature does not take three positional arguments.
    """
    if callback is None:
        return
    if not callable(callback):
        raise AviError(
            f"callback={callback!r} is not callable; give a function "
            "callback(step, params, problem) (a true return value stops the fit)."
        )
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(0, None, None)
    except TypeError as error:
        raise AviError(
            f"callback {getattr(callback, '__name__', callback)!r}{signature} cannot be called "
            f"as callback(step, params, problem): {error}."
        ) from None


class GuardedCallback:
    """The user's callback; an exception it raises stops the fit instead of losing it.

    The fit then ends with reason "callback", and :func:`avi.fit` raises
    :class:`avi.CallbackError` carrying the fit so far (``error.fit``).
    """

    def __init__(self, callback: Callable[..., Any]) -> None:
        self.callback = callback
        self.error: BaseException | None = None
        self.step: int | None = None

    def __call__(self, step: int, params: Any, problem: Any) -> bool:
        try:
            return bool(self.callback(step, params, problem))
        except Exception as error:  # noqa: BLE001 -- the user's code; re-raised with the fit
            self.error, self.step = error, step
            return True

    def raise_if_failed(self, fitted: Any) -> None:
        """Raise :class:`avi.CallbackError` (with ``.fit``) if the callback raised."""
        if self.error is None:
            return
        failure = CallbackError(
            f"The callback raised {type(self.error).__name__}: {self.error} (after step "
            f"{self.step}). The fit stopped there and is kept: error.fit holds it."
        )
        failure.fit = fitted
        raise failure from self.error
