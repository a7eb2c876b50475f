"""Expanded encoder inputs: a datum with its neighbours (the paper's expanded domain, Eq. 17)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avi.errors import FamilyError


@dataclass(frozen=True)
class Window:
    """Expanded encoder input: the datum and its neighbours at the given offsets.

    ``Window(offsets=(-1, 0))`` feeds (x_{n-1}, x_n), the input that closes the gap on the
    paper's saw time series. Offsets are positions along the data plate.
    """

    offsets: tuple[int, ...] = (-1, 0)

    def __post_init__(self) -> None:
        if isinstance(self.offsets, (int, np.integer)) or not isinstance(
            self.offsets, (tuple, list, np.ndarray)
        ):
            raise FamilyError(
                f"Window(offsets={self.offsets!r}): give a tuple of ints, the positions of the "
                f"neighbours relative to the datum, e.g. offsets=(-1, 0) or offsets=({self.offsets!r},)."
            )
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


def free_slots(complete: np.ndarray) -> np.ndarray:
    """(N,) slot of each incomplete datum among the free factors, -1 for complete ones."""
    slots = np.full(complete.shape, -1, dtype=np.int32)
    slots[~complete] = np.arange(int((~complete).sum()), dtype=np.int32)
    return slots


def check_reach(inputs: Window | None, num_data: int) -> None:
    """A Window whose offsets span the whole data leaves no datum complete: A-VI would silently
    become F-VI (every factor free).

    Raises:
        FamilyError: an offset of size N or more.
    """
    if inputs is None:
        return
    span = max(0, *inputs.offsets) - min(0, *inputs.offsets)
    if span >= num_data:
        raise FamilyError(
            f"Window(offsets={inputs.offsets}) spans {span + 1} consecutive data, but there are "
            f"only N={num_data}: no datum would have all its neighbours, so every factor would "
            f"be free (F-VI, not A-VI). Use offsets spanning fewer than N={num_data} data."
        )
