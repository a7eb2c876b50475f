"""Stochastic VI as pure functions: State, ``init``/``step``, the stop rule and the runner."""

from avi.data.batch import Batch, StreamedRows, draw_batch
from avi.vi.algorithm import Algorithm, Settings, default_optimizer, step_keys
from avi.vi.build import build, fit_keys
from avi.vi.certify import BlockEvidence, Certificate, Tolerances, certify
from avi.vi.runner import History, Run, run
from avi.vi.state import Info, OptState, State
from avi.vi.stop import PlateauRule, StopState

__all__ = [
    "Algorithm",
    "Batch",
    "BlockEvidence",
    "Certificate",
    "History",
    "Info",
    "OptState",
    "PlateauRule",
    "Run",
    "Settings",
    "State",
    "StopState",
    "StreamedRows",
    "Tolerances",
    "build",
    "certify",
    "default_optimizer",
    "draw_batch",
    "fit_keys",
    "run",
    "step_keys",
]
