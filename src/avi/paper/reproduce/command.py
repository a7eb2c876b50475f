"""``avi reproduce NAME|all``: run experiments into an output directory, and its command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from avi.errors import AviError
from avi.options import positive_int_text as positive_int
from avi.paper.experiments import registry
from avi.paper.experiments.sizes import DEFAULT_SEEDS, SIZES, check_size
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
    for setup in setups:
        result = run_experiment(setup, size, range(seeds), log)
        result.info = replace(result.info, command=command)
        save(result, out / setup.name)
        log(f"[{setup.name}] done in {result.info.duration_s:.0f} s -> {out / setup.name}")
    return write_report(out)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["avi reproduce", args.name, f"--size {args.size}"]
    parts += [f"--seeds {args.seeds}"] if args.seeds else []
    parts += [f"--out {args.out}"] + ([f"--data {args.data}"] if args.data else [])
    return " ".join(parts)


def _handle(args: argparse.Namespace) -> int:
    log: Log = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if args.progress
        else (lambda _: None)
    )
    try:
        report = reproduce(
            args.name,
            args.size,
            args.seeds,
            args.out,
            args.data,
            log,
            _command_line(args),
            force=args.force,
        )
    except AviError as error:
        print(f"avi reproduce: error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


def add_reproduce_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi reproduce NAME|all [--seeds S] [--quick|--size S] [--out DIR] [--data P]``."""
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's experiments: CSVs, figures and REPORT.md",
        description=(
            "Fit every family of the paper's experiments over seeds and write, per experiment, "
            "the ELBO paths, a summary, figures, and DIR/REPORT.md comparing the run with the "
            "paper's findings."
        ),
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        choices=(*registry.EXPERIMENTS, registry.ALL),
        help=f"one of {', '.join(registry.EXPERIMENTS)}, or {registry.ALL}",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        help="number of seeds (default: 10 at full size, 2 with --quick)",
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--quick",
        dest="size",
        action="store_const",
        const="quick",
        help="small sizes: all five experiments in under 10 minutes on 2 cores",
    )
    sizes.add_argument(
        "--size", dest="size", choices=SIZES, help="run size (default full: the paper's sizes)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reproduction"),
        metavar="DIR",
        help="output directory (default ./reproduction)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="directory of FashionMNIST's IDX files for the deep generative "
        "model (default: scikit-learn's digits)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DIR (only files an earlier avi reproduce wrote are replaced)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(size="full", handler=_handle)
