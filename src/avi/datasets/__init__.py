"""Real data shipped with avi (small and public), for examples and tests; nothing is downloaded.

Source: the posteriordb collection (stan-dev/posteriordb), which took them from Gelman and Hill
(2006), *Data Analysis Using Regression and Multilevel/Hierarchical Models*, chapter 12: the
radon measurements of the US EPA's survey of houses.

* ``radon_mn.json``: Minnesota, N = 919 houses in J = 85 counties;
* ``radon_all.json``: every state of the survey, N = 12,573 houses in J = 386 counties.

:mod:`avi.datasets.models` holds the standard varying-intercept and varying-slope models.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import NamedTuple

import numpy as np

from avi.errors import AviError

from avi.datasets.models import radon_intercept, radon_slope

__all__ = ["Radon", "radon", "radon_intercept", "radon_slope"]

_FILES = {"MN": "radon_mn.json", "all": "radon_all.json"}


class Radon(NamedTuple):
    """The radon survey, one entry per house (Gelman and Hill 2006, ch. 12).

    Attributes:
        county: (N,) int32 county of each house, 0..J-1.
        floor: (N,) float32 floor of the measurement: 0 basement, 1 first floor (the all-states
            data also hold 2, 3 and 9, the survey's code for unknown).
        log_radon: (N,) float32 log radon level.
        log_uppm: (N,) float32 log uranium level of the house's county.
        num_counties: J.
    """

    county: np.ndarray
    floor: np.ndarray
    log_radon: np.ndarray
    log_uppm: np.ndarray
    num_counties: int

    def subset(self, counties: np.ndarray) -> Radon:
        """The houses of ``counties`` only, their county ids renumbered 0..k-1 in the order
        given (k = len(counties)): training data without some counties, or new counties."""
        counties = np.asarray(counties, np.int64)
        renumber = np.full(self.num_counties, -1, np.int32)
        renumber[counties] = np.arange(len(counties), dtype=np.int32)
        rows = renumber[self.county] >= 0
        return Radon(
            renumber[self.county[rows]],
            self.floor[rows],
            self.log_radon[rows],
            self.log_uppm[rows],
            len(counties),
        )

    @property
    def county_log_uppm(self) -> np.ndarray:
        """(J,) log uranium per county (NaN for a county without houses)."""
        values = np.full(self.num_counties, np.nan, np.float32)
        values[self.county] = self.log_uppm
        return values


def radon(state: str = "MN") -> Radon:
    """The radon data of Minnesota (``"MN"``, 919 houses in 85 counties) or of every state of
    the survey (``"all"``, 12,573 houses in 386 counties).

    Raises:
        AviError: another ``state``.
    """
    if state not in _FILES:
        raise AviError(f"radon(state={state!r}): give 'MN' or 'all'.")
    text = resources.files(__name__).joinpath(_FILES[state]).read_text()
    data = json.loads(text)
    return Radon(
        county=np.asarray(data["county_idx"], np.int32) - 1,
        floor=np.asarray(data["floor_measure"], np.float32),
        log_radon=np.asarray(data["log_radon"], np.float32),
        log_uppm=np.asarray(data["log_uppm"], np.float32),
        num_counties=int(data["J"]),
    )
