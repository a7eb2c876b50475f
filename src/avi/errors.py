"""Errors that a user can cause, raised at the boundary with a message that names the fix."""

from __future__ import annotations


class AviError(ValueError):
    """Base class of every error `avi` raises because of its input."""


class ModelError(AviError):
    """The NumPyro model cannot be fitted as given (plates, sites, supports)."""


class DataError(AviError):
    """An argument of the model is unusable (non-finite values, mismatched lengths)."""


class FamilyError(AviError):
    """A variational family or encoder is misconfigured or cannot do what was asked."""


class DivergenceError(AviError):
    """The optimisation produced non-finite ELBOs or gradients and cannot go on; ``fit``
    holds the last finite fit (from :func:`avi.fit`), ``run`` the runner's record."""

    fit: object | None = None
    run: object | None = None


class CallbackError(AviError):
    """The user's callback raised during a fit; ``fit`` holds the fit up to that step."""

    fit: object | None = None


class ConvergenceWarning(UserWarning):
    """A fit stopped without a convergence certificate: some block could still gain nats."""


class Interrupted(AviError):
    """Ctrl-C stopped a command of several fits (``avi.compare``, ``avi.sweep``); ``fits``
    holds the fits done, the interrupted one last (its ``stop_reason`` is "interrupted")."""

    fits: dict | None = None
