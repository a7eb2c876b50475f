"""The state of a fit: everything needed to take the next step or to resume.

Keys are never stored: the runner derives each step's key from the fit's key and
``State.step`` (:func:`avi.vi.step_keys`), so a resumed fit draws the same numbers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from avi.vi.problem import VariationalParams
from avi.vi.stop import StopState


class OptState(NamedTuple):
    """Optimiser states of the two parameter groups.

    The family's per-datum tables (F-VI's N x D_l locations and log-scales) have an optimiser
    state of their own, so that a minibatch step gathers, updates and scatters only the batch's
    rows of the tables *and* of their optimiser moments: O(B) work, and the factors of data
    outside the batch stay exactly as they were (a lazy update, as sparse Adam does).

    Attributes:
        dense: state of the optimizer over q(theta) and the shared local parameters (encoder).
        tables: state of the optimizer over the per-datum tables (empty without tables).
    """

    dense: Any
    tables: Any


class State(NamedTuple):
    """One fit's state.

    Attributes:
        params: the variational parameters.
        opt_state: the optimiser states (:class:`OptState`).
        stop: the stop rule's state (:class:`avi.vi.stop.StopState`); its ``scale`` multiplies
            every update.
        step: steps taken.
        skipped: steps whose loss or gradient was not finite (their update was not applied).
        average: the running mean of the parameters at the ends of the chunks since the stop
            rule first fired (Polyak-Ruppert averaging, :func:`avi.vi.runner.run`); None
            before then.
        averaged: how many chunk ends ``average`` holds.
    """

    params: VariationalParams
    opt_state: OptState
    stop: StopState
    step: jax.Array
    skipped: jax.Array
    average: VariationalParams | None = None
    averaged: int = 0


class Info(NamedTuple):
    """What one step reports.

    Attributes:
        elbo: the step's ELBO estimate (on its batch, scaled to the full data).
        finite: whether the estimate and its gradient were finite (else the step was skipped).
    """

    elbo: jax.Array
    finite: jax.Array
