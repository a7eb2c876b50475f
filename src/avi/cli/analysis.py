"""``avi check`` and ``avi compare``: the structure verdict and the gap table from the shell.

    avi check FILE.py:NAME --data DATA
    avi compare FILE.py:NAME --data DATA [--families factorized,constant,mlp:16]

``FILE.py:NAME`` names a NumPyro model function in a Python file; ``DATA`` is an .npz, .npy or
.csv file of the model's arguments (:mod:`avi.cli.inputs`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from avi.analysis.compare import Comparison, compare
from avi.analysis.report import comparison_report
from avi.cli.common import (
    add_eval_particles,
    add_model_arguments,
    add_num_seeds,
    add_progress,
    handled,
    positive_int,
)
from avi.cli.inputs import (
    FAMILY_TOKENS,
    Arguments,
    check_signature,
    load_data,
    load_model,
    parse_families,
    parse_window,
)
from avi.data.boundary import convert_arguments
from avi.errors import AviError
from avi.structure import check

__all__ = ["add_analysis_commands", "parse_families"]

DEFAULT_FAMILIES = "factorized,constant,amortized"


def model_and_data(args: argparse.Namespace) -> tuple[object, Arguments]:
    """The model of ``args.model`` and its arguments from ``args.data``, checked against its
    signature."""
    model = load_model(args.model)
    arguments = load_data(args.data)
    check_signature(model, arguments, f"--data {args.data}")
    return model, arguments


def _check(args: argparse.Namespace) -> int:
    model, arguments = model_and_data(args)
    model_args, model_kwargs = convert_arguments(*arguments)
    report = check(model, *model_args, plate=args.plate, groups=args.groups, **model_kwargs)
    print(f"verdict: {report.verdict}")
    print(f"encoder inputs (offsets): {report.inputs}")
    print(report.explanation)
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.report is not None and Path(args.report).is_dir():
        raise AviError(f"--report {args.report}: it is a folder; give a file such as out.html.")
    figures = None if args.figures is None else Path(args.figures)
    if figures is not None and figures.exists() and not figures.is_dir():
        raise AviError(f"--figures {figures}: it is a file; give a folder for the figures.")
    model, (model_args, model_kwargs) = model_and_data(args)
    families = parse_families(args.families, parse_window(args.window))
    given = {
        "num_steps": args.num_steps,
        "max_steps": args.max_steps,
        "plate": args.plate,
        "groups": args.groups,
    }
    options = {k: v for k, v in given.items() if v is not None}
    comparison = compare(
        model,
        *model_args,
        families=families,
        seeds=args.num_seeds,
        eval_particles=args.eval_particles,
        tolerance=args.tolerance,
        progress=args.progress,
        **options,
        **model_kwargs,
    )
    if comparison.added_reference:
        name = comparison.reference
        print(f"No family is factorized: added avi.Factorized() as the reference {name!r}.")
    summary = comparison.summary()
    notes = summary.pop("note")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for family, note in zip(summary["family"], notes, strict=True):
        if note:
            print(f"note on {family}: {note}")
    print(
        f"gap: ELBO of {comparison.reference} (or of the F-VI of the family's factor, where a "
        "note says so) minus the family's, paired draws. Per seed: "
        f"closed when |gap| <= 2 standard errors + {args.tolerance:g} nats, open above, "
        "'reference not converged' below (Prop. 2.1); over seeds: their common verdict, else "
        "'seeds disagree'."
    )
    if figures is not None:
        _save_figures(comparison, figures)
    if args.report is not None:
        structure = check(model, *model_args, plate=args.plate, groups=args.groups, **model_kwargs)
        path = comparison_report(comparison, args.report, structure)
        print(f"report: {path}")
    return 0


def _save_figures(comparison: Comparison, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    comparison.plot_elbo().savefig(directory / "elbo.png", dpi=110)
    for name in comparison.families:
        if name != comparison.reference:
            target = directory / f"per_datum_gaps_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
            comparison.plot_per_datum_gaps(name).savefig(target, dpi=110)
    print(f"figures written to {directory}")


def add_window(parser: argparse.ArgumentParser) -> None:
    """``--window OFFSETS`` of the amortized families."""
    parser.add_argument(
        "--window",
        default=None,
        metavar="OFFSETS",
        help="the encoder also sees these neighbours of each datum, e.g. --window=-1,0 "
        "(the previous datum and the datum; see avi check's offsets)",
    )


def add_analysis_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi check`` and ``avi compare``."""
    check_parser = subparsers.add_parser(
        "check",
        help="can amortized VI match factorized VI on this model? (Theorem 3.4)",
        description="Print avi.check's verdict, the encoder's input offsets and the explanation.",
        epilog="example: avi check my_model.py:model --data data.csv",
    )
    add_model_arguments(check_parser)
    check_parser.set_defaults(handler=handled("check", _check))

    compare_parser = subparsers.add_parser(
        "compare",
        help="fit several families and print the amortization-gap table",
        description=(
            "Fit each family (plus F-VI if none is factorized) and print avi.analysis.compare's "
            "summary: each family's ELBO, its gap to F-VI and whether the gap is closed."
        ),
        epilog="example: avi compare my_model.py:model --data data.csv --families factorized,mlp:16",
    )
    add_model_arguments(compare_parser)
    compare_parser.add_argument(
        "--families",
        default=DEFAULT_FAMILIES,
        help=f"comma-separated: {FAMILY_TOKENS} (default {DEFAULT_FAMILIES})",
    )
    add_window(compare_parser)
    add_num_seeds(compare_parser, 1, "fit each family with seeds 0 .. S-1 (default 1)")
    compare_parser.add_argument(
        "--num-steps",
        type=positive_int,
        default=None,
        help="fixed steps per fit (default: the stop rule)",
    )
    compare_parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="step cap of the stop rule (default: avi.fit's)",
    )
    add_eval_particles(compare_parser)
    compare_parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="NATS",
        help="gap forgiven beyond 2 standard errors in the verdicts",
    )
    compare_parser.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="also write elbo.png and per-datum gap histograms to DIR",
    )
    compare_parser.add_argument(
        "--report",
        default=None,
        metavar="FILE.html",
        help="also write one self-contained HTML page: structure check, table, figures and "
        "convergence evidence",
    )
    add_progress(compare_parser)
    compare_parser.set_defaults(handler=handled("compare", _compare))
