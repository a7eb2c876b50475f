"""Checkpoints: a fit's full state on disk, written atomically, and resumed bit for bit.

A checkpoint holds what the runner needs to go on as if it had never stopped: the
:class:`avi.vi.State` (parameters, optimiser moments, stop-rule state with its annealing
stage, step count, the iterate average) and the runner's own record (the history, the number
of certificates asked, the step of the last one, the wall time so far). Keys are not stored:
step k's key is derived from the fit's seed and k (:func:`avi.vi.step_keys`), so a resumed fit
draws the same numbers and ends where the uninterrupted one would have.

The file is one binary: a magic line, an 8-byte header length, a JSON header (format, the
fit's *fingerprint*, the runner's record) and the state's leaves as equinox serialises them
(:func:`equinox.tree_serialise_leaves`). It is written to ``PATH.tmp``, flushed to disk and
renamed over ``PATH`` (:func:`os.replace` is atomic), so a process killed mid-write leaves the
previous checkpoint intact. The fingerprint (model, family, data shapes and a digest of their
values, seed and options) must match the resuming fit's, or the checkpoint is refused with
the differing entries named.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np

from avi.errors import AviError
from avi.vi.state import State

MAGIC = b"avi-checkpoint\n"
FORMAT = 1


class Progress(NamedTuple):
    """The runner's record besides the state.

    Attributes:
        steps, elbos, times: the history so far (per chunk).
        backoffs: steps at which the runner backed off from a divergence.
        attempts: certificates asked so far (their draws are keyed by this count).
        certified_at: step of the last certificate (-1: none).
        wall_time: seconds of optimisation so far.
        reason: why the fit ended, or None while it runs.
    """

    steps: tuple[int, ...] = ()
    elbos: tuple[float, ...] = ()
    times: tuple[float, ...] = ()
    backoffs: tuple[int, ...] = ()
    attempts: int = 0
    certified_at: int = -1
    wall_time: float = 0.0
    reason: str | None = None


def digest(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A digest of the data: every array argument's shape, dtype and bytes; other values' repr."""
    hasher = hashlib.sha256()
    for position, value in [*enumerate(args), *sorted(kwargs.items())]:
        hasher.update(repr(position).encode())
        if isinstance(value, (np.ndarray, jax.Array)):
            array = np.ascontiguousarray(np.asarray(value))
            hasher.update(f"{array.shape}{array.dtype}".encode())
            hasher.update(array.tobytes())
        else:
            hasher.update(repr(value).encode())
    return hasher.hexdigest()


def _like(state: State, has_average: bool) -> State:
    """The skeleton a checkpoint's leaves load into."""
    return state._replace(average=state.params if has_average else None)


def write_checkpoint(
    path: Path, state: State, progress: Progress, fingerprint: Mapping[str, Any]
) -> None:
    """Write ``state`` and ``progress`` to ``path`` atomically (module docstring)."""
    header = {
        "format": FORMAT,
        "fingerprint": dict(fingerprint),
        "progress": progress._asdict(),
        "has_average": state.average is not None,
        "averaged": int(state.averaged),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, state._replace(averaged=0))
    text = json.dumps(header).encode()
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(MAGIC)
        file.write(len(text).to_bytes(8, "little"))
        file.write(text)
        file.write(leaves.getvalue())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def read_checkpoint(
    path: Path, fresh: State, fingerprint: Mapping[str, Any]
) -> tuple[State, Progress]:
    """The state and progress saved at ``path``, loaded into the structure of ``fresh`` (the
    fit's own initial state).

    Raises:
        AviError: not a checkpoint, damaged, or of another fit (the differing entries named).
    """
    try:
        with open(path, "rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                raise AviError(f"checkpoint={str(path)!r} is not an avi checkpoint.")
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
            if header.get("format") != FORMAT:
                raise AviError(
                    f"checkpoint={str(path)!r} has format {header.get('format')}; this avi "
                    f"reads format {FORMAT}."
                )
            saved = header["fingerprint"]
            differing = sorted(
                key for key in set(saved) | set(fingerprint) if saved.get(key) != fingerprint.get(key)
            )
            if differing:
                details = "; ".join(
                    f"{key}: checkpoint {saved.get(key)!r}, this fit {fingerprint.get(key)!r}"
                    for key in differing
                )
                raise AviError(
                    f"checkpoint={str(path)!r} belongs to another fit ({details}). Give another "
                    "path, or delete the file to start afresh."
                )
            like = _like(fresh, bool(header["has_average"]))
            state = eqx.tree_deserialise_leaves(file, like)
    except AviError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise AviError(
            f"checkpoint={str(path)!r} cannot be read ({type(error).__name__}: {error}); "
            "delete it to start afresh."
        ) from error
    record = header["progress"]
    progress = Progress(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
    )
    return state._replace(averaged=int(header["averaged"])), progress


class Checkpointer:
    """Writes a fit's checkpoints to ``path`` at most every ``interval`` seconds (and when
    asked to, on interruption and at the end)."""

    def __init__(self, path: Path, interval: float, fingerprint: Mapping[str, Any]) -> None:
        self.path, self.interval, self.fingerprint = Path(path), float(interval), fingerprint
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval

    def write(self, state: State, progress: Progress) -> None:
        write_checkpoint(self.path, state, progress, self.fingerprint)
        self.last = time.monotonic()
