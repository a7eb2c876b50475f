"""``avi reproduce NAME|all``: run experiments into an output directory (its command line is
in :mod:`avi.cli.paper`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from avi.errors import AviError, Interrupted
from avi.fit import interrupts_raise
from avi.paper.experiments import registry
from avi.paper.experiments.sizes import DEFAULT_SEEDS, check_size
from avi.paper.reproduce.files import save
from avi.paper.reproduce.output import check_output
from avi.paper.reproduce.report import write_report
from avi.paper.reproduce.run import Log, run_experiment


def reproduce(
    name: str,
    size: str = "full",
    seeds: int | None = None,
    out: str | Path = "reproduction",
    data: str | Path | None = None,
    log: Log = lambda _: None,
    command: str = "avi reproduce",
    force: bool = False,
) -> Path:
    """Run experiment ``name`` (or ``all``), write its files under ``out`` and ``out/REPORT.md``.

    Every setup is built (and its data loaded) before the first fit, so bad input fails fast.

    Args:
        name: an experiment name or ``all``.
        size: run size: tiny, quick, medium or full (the paper's sizes).
        seeds: number of seeds, 0..seeds-1 (default by size: 10 for full).
        out: output directory.
        data: FashionMNIST IDX directory for the deep generative model.
        log: receives progress lines.
        command: the command line, quoted in the report.
        force: write into a non-empty ``out`` (replacing only files avi reproduce wrote).

    Returns:
        The path of REPORT.md.

    Raises:
        AviError: unknown name or size, a bad seed count, missing IDX files, or an output
            folder that is not empty (without ``force``) or holds files avi did not write.
    """
    size = check_size(size)
    if seeds is None:
        seeds = DEFAULT_SEEDS[size]
    if not isinstance(seeds, int) or seeds < 1:
        raise AviError(f"seeds={seeds!r}: give a positive number of seeds.")
    out = Path(out)
    names = registry.names(name)
    check_output(out, names, force)
    setups = [registry.build(n, size, data) for n in names]
    finished = []
    for setup in setups:
        try:
            with interrupts_raise():
                result = run_experiment(setup, size, range(seeds), log)
        except Interrupted as error:
            report = write_report(out) if finished else None
            message = (
                f"avi reproduce was interrupted during experiment '{setup.name}' ({error}); the "
                f"experiments finished before it are in {out}"
                + (f" (report: {out / 'REPORT.md'})" if report is not None else "")
                + "."
            )
            raise Interrupted(message) from None
        result.info = replace(result.info, command=command)
        save(result, out / setup.name)
        log(f"[{setup.name}] done in {result.info.duration_s:.0f} s -> {out / setup.name}")
        finished.append(setup.name)
    return write_report(out)
