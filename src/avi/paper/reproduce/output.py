"""The output folder of ``avi reproduce``: never write into a user's files.

Before the first fit, the folder is checked: a non-empty folder needs ``force`` (``--force``),
and even then only files that an earlier ``avi reproduce`` wrote are replaced: an experiment's
folder is ours when its ``run.json`` names that experiment, ``REPORT.md`` when it starts with
the report's title. Anything else in the folder (stray files and subfolders) is left alone and
ignored by the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from avi.errors import AviError

__all__ = ["REPORT_TITLE", "check_output", "written_by_us"]

REPORT_TITLE = "# Reproduction: Margossian and Blei (2024)"
"""The first line of every REPORT.md that ``avi reproduce`` writes (its prefix)."""

EXPERIMENT_FILES = ("paths.csv", "fits.csv", "summary.csv", "claims.csv", "run.json")
"""Files :func:`avi.paper.reproduce.files.save` writes into an experiment's folder (besides
its figures)."""


def written_by_us(directory: Path, name: str) -> bool:
    """Whether ``directory`` is experiment ``name``'s folder from an earlier run."""
    try:
        info = json.loads((directory / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("name") == name


def _report_is_ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.readline().startswith(REPORT_TITLE)
    except (OSError, UnicodeDecodeError):
        return False


def check_output(out: Path, names: Sequence[str], force: bool) -> None:
    """Refuse, before any fit, an output folder whose files avi would overwrite unasked.

    Args:
        out: the output folder (created later if missing).
        names: the experiments about to be written, each into ``out/name``.
        force: allow writing into a non-empty folder (replacing only avi's own files).

    Raises:
        AviError: ``out`` is a file; ``out`` is not empty and ``force`` is off; or (even with
            ``force``) a file or folder that avi would replace was not written by avi.
    """
    if out.exists() and not out.is_dir():
        raise AviError(f"--out {out}: it is a file, not a folder; give a folder's path.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise AviError(
            f"--out {out}: the folder is not empty. Give a new or empty folder, or pass --force "
            "to write into it (avi then replaces only the files an earlier avi reproduce wrote "
            "there: REPORT.md and the experiments' folders)."
        )
    foreign = []
    report = out / "REPORT.md"
    if report.exists() and (not report.is_file() or not _report_is_ours(report)):
        foreign.append(str(report))
    for name in names:
        directory = out / name
        if not directory.exists():
            continue
        if (
            not directory.is_dir()
            or not written_by_us(directory, name)
            and any((directory / f).exists() for f in EXPERIMENT_FILES)
        ):
            foreign.append(str(directory))
    if foreign:
        raise AviError(
            f"--out {out}: avi would overwrite {', '.join(foreign)}, which an avi reproduce run "
            "did not write. Move them away, or give another folder."
        )
