"""``avi fit``: fit a model to a data file once and save the fit, a summary and a figure.

    avi fit FILE.py:NAME --data DATA --out DIR [--family mlp:32] [--window -1,0] ...

DIR receives the saved fit (``fit.json`` and ``arrays.eqx``, see :mod:`avi.saving`), which
``avi infer DIR`` and ``avi.load(DIR, model)`` read, ``summary.txt`` (also printed) and
``elbo.png`` (the ELBO along the steps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from avi.cli.analysis import add_window, model_and_data
from avi.cli.common import (
    add_eval_particles,
    add_model_arguments,
    add_progress,
    handled,
    positive_int,
    seed,
)
from avi.cli.inputs import FAMILY_TOKENS, parse_family, parse_window
from avi.analysis.report import fit_report
from avi.data.groups import GroupedModel
from avi.errors import AviError
from avi.families import Amortized
from avi.fit import fit
from avi.result import Fit
from avi.saving.files import ARRAYS, DESCRIPTION
from avi.structure import check

SUMMARY = "summary.txt"
FIGURE = "elbo.png"
REPORT = "report.html"
OWN_FILES = (DESCRIPTION, ARRAYS, SUMMARY, FIGURE, REPORT)
"""What ``avi fit`` writes into DIR; ``--force`` replaces these and nothing else."""


def check_out(directory: Path, force: bool) -> None:
    """DIR must be new or empty, or hold only an earlier ``avi fit``'s files with ``--force``.

    Raises:
        AviError: DIR is a file, is not empty (without ``--force``), or holds other files.
    """
    if directory.exists() and not directory.is_dir():
        raise AviError(f"--out {directory}: it is a file; give a folder for the fit.")
    present = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    if not present:
        return
    others = [name for name in present if name not in OWN_FILES]
    if others:
        raise AviError(
            f"--out {directory}: it holds files avi fit did not write ({', '.join(others[:3])}); "
            "give a new or empty folder."
        )
    if not force:
        raise AviError(
            f"--out {directory}: it already holds a fit; add --force to replace it, or give "
            "another folder."
        )


def _global_table(result: Fit, num_samples: int, seed_value: int) -> list[str]:
    """Mean, sd and 90% interval of every global coordinate under q (constrained space)."""
    names = [s.name for s in result.traced.layout.globals]
    if not names:
        return ["q of the globals: the model has no global latent."]
    draws = result.sample(num_samples, seed=seed_value)
    lines = [f"q of the globals ({num_samples} draws, the model's space):"]
    lines.append(f"  {'site':<16}{'mean':>11}{'sd':>11}{'5%':>11}{'95%':>11}")
    for name in names:
        values = draws[name].reshape(num_samples, -1)
        for i in range(values.shape[1]):
            label = name if values.shape[1] == 1 else f"{name}[{i}]"
            column = values[:, i]
            low, high = np.quantile(column, [0.05, 0.95])
            lines.append(
                f"  {label:<16}{column.mean():>11.4g}{column.std(ddof=1):>11.4g}"
                f"{low:>11.4g}{high:>11.4g}"
            )
    return lines


def summary(result: Fit, args: argparse.Namespace) -> str:
    """What ``avi fit`` prints and writes to summary.txt."""
    layout = result.traced.layout
    estimate = result.elbo(args.eval_particles, seed=args.seed)
    evidence = "certified" if result.converged else "NOT certified: " + str(result.certificate)
    sites = (
        f"globals {', '.join(s.name for s in layout.globals) or 'none'}; "
        f"locals {', '.join(s.name for s in layout.locals) or 'none'}"
    )
    window = f", window {args.window}" if args.window else ""
    infer = f"avi infer {args.out} --model {args.model} --data NEW --out posterior.csv"
    lines = [
        f"model {args.model}, data {args.data}: N = {layout.num_data} in plate '{layout.plate}'"
        + (" (groups)" if isinstance(result.traced.model, GroupedModel) else ""),
        f"latent sites: {sites}",
        f"family: {args.family}{window}",
        f"steps: {result.num_steps} (stopped by {result.stop_reason}), {result.wall_time:.1f} s",
        f"converged: {'yes' if result.converged else 'no'} ({evidence})",
        f"ELBO: {estimate} ({args.eval_particles} draws)",
        *_global_table(result, 1000, args.seed),
        f"saved fit: {args.out}; new data: {infer} (or avi.load(path, model) in Python)",
    ]
    return "\n".join(lines) + "\n"


def plot_history(result: Fit, path: Path) -> None:
    """The ELBO estimate of each chunk against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(result.history.step, result.history.elbo)
    axes.set_xlabel("step")
    axes.set_ylabel("ELBO (mean of the chunk's estimates)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    resuming = args.checkpoint is not None and Path(args.checkpoint).is_file()
    check_out(out, args.force or resuming)  # a resumed fit replaces its own partial one
    family = parse_family(args.family, parse_window(args.window), option="--family")
    if args.window is not None and not isinstance(family, Amortized):
        raise AviError(
            f"--window {args.window}: only an amortized family's encoder reads neighbours; "
            f"--family {args.family} has none. Drop --window or use an amortized family."
        )
    model, (model_args, model_kwargs) = model_and_data(args)
    given = {
        "num_steps": args.num_steps,
        "max_steps": args.max_steps,
        "tol": args.tol,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "plate": args.plate,
        "groups": args.groups,
        "checkpoint": args.checkpoint,
    }
    options = {k: v for k, v in given.items() if v is not None}
    result = fit(
        model,
        *model_args,
        family=family,
        seed=args.seed,
        num_particles=args.num_particles,
        progress=args.progress,
        **options,
        **model_kwargs,
    )
    text = summary(result, args)
    result.save(out, overwrite=True)
    (out / SUMMARY).write_text(text)
    plot_history(result, out / FIGURE)
    print(text, end="")
    if args.report:
        structure = check(model, *model_args, plate=args.plate, groups=args.groups, **model_kwargs)
        print(f"report: {fit_report(result, out / REPORT, structure, summary=text)}")
    if result.stop_reason == "interrupted":
        resume = (
            f"; run the same command again to resume from {args.checkpoint}"
            if args.checkpoint
            else "; --checkpoint FILE would let the next run resume"
        )
        print(f"interrupted at step {result.num_steps}: the partial fit is written to {out}{resume}")
    return 0


def add_fit_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi fit``."""
    parser = subparsers.add_parser(
        "fit",
        help="fit a model to a data file and save the fit (then: avi infer)",
        description=(
            "Fit the NumPyro model to the data with one variational family, then write the "
            "saved fit, summary.txt and elbo.png into --out DIR. The stop rule decides when "
            "the fit has converged unless --num-steps fixes the number of steps."
        ),
        epilog=(
            "example: avi fit my_model.py:model --data train.csv --family mlp:32 --out fitted\n"
            "then:    avi infer fitted --model my_model.py:model --data new.csv --out post.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the saved fit (new or empty)"
    )
    parser.add_argument(
        "--family",
        default="amortized",
        help=f"the variational family: {FAMILY_TOKENS} (default amortized: an MLP of width 32)",
    )
    add_window(parser)
    parser.add_argument(
        "--seed", type=seed, default=0, metavar="S", help="seed of the fit (default 0)"
    )
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument(
        "--num-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="run exactly this many steps",
    )
    steps.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="step cap of the stop rule",
    )
    parser.add_argument(
        "--tol", type=float, default=None, metavar="T", help="the stop rule's threshold"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="B",
        help="data per step (default: chosen)",
    )
    parser.add_argument(
        "--num-particles",
        type=positive_int,
        default=1,
        metavar="P",
        help="Monte Carlo draws per step",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help="Adam's learning rate (default 1e-2)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help=f"also write DIR/{REPORT}: one self-contained HTML page (structure check, "
        "summary, ELBO against time, convergence evidence)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="keep the fit's state in FILE (every minute, on Ctrl-C, at the end) and resume "
        "from it when it exists",
    )
    add_eval_particles(parser)
    parser.add_argument(
        "--force", action="store_true", help="replace a fit an earlier avi fit wrote into DIR"
    )
    add_progress(parser)
    parser.set_defaults(handler=handled("fit", _fit))
