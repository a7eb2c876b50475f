"""``avi demo``, ``avi reproduce`` and ``avi bench``: the paper's models from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from avi.cli.common import (
    add_eval_particles,
    add_num_seeds,
    add_progress,
    at_least_two,
    deprecated_alias,
    handled,
    positive_int,
    seed,
)
from avi.paper.experiments import registry
from avi.paper.experiments.sizes import SIZES
from avi.paper.reproduce import command
from avi.paper.reproduce.run import Log


def _demo(args: argparse.Namespace) -> int:
    """Fit the paper's linear model with the three families and print the comparison table."""
    import avi
    from avi.paper.experiments import linear

    x = linear.simulate(args.num_data, seed=args.seed)
    optimum = linear.factorized_optimum(x)
    print(
        f"The paper's linear model (Eq. 8): N = {args.num_data}, tau = {linear.TAU}, "
        f"sigma = {linear.SIGMA}, flat prior on theta."
    )
    print(f"Closed-form optimal F-VI ELBO: {optimum.elbo:.2f}\n")
    families = {
        "factorized (F-VI)": avi.Factorized(),
        "amortized, Polynomial(1)": avi.Amortized(avi.Polynomial(1)),
        "amortized, MLP(16)": avi.Amortized(avi.MLP(width=16)),
        "constant": avi.Constant(),
    }
    rows = []
    reference = None
    for label, family in families.items():
        start = time.perf_counter()
        result = avi.fit(linear.model, x, family=family, seed=args.seed, progress=args.progress)
        elapsed = time.perf_counter() - start
        draws = result.elbo_draws(args.eval_particles, seed=args.seed + 1)
        if reference is None:
            reference = draws
        gap = reference - draws
        rows.append(
            (
                label,
                f"{draws.mean():.2f} +- {draws.std(ddof=1) / np.sqrt(draws.size):.2f}",
                f"{gap.mean():.2f} +- {gap.std(ddof=1) / np.sqrt(gap.size):.2f}",
                str(result.num_steps),
                f"{elapsed:.1f}",
                str(result.num_parameters),
            )
        )
    header = ("family", "ELBO", "gap to F-VI", "steps", "wall s", "parameters")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(
        f"\nELBO: {args.eval_particles} draws; the gap uses the same draws for every family "
        "(common random numbers), so its stderr is that of the difference.\n"
        f"Closed-form gap of the constant family: {linear.constant_gap(x):.2f}."
    )
    return 0


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="a first look: the paper's linear model fitted with four families",
        description="Fit the paper's linear model with F-VI, two amortized families and the "
        "constant family, and print their ELBOs and gaps beside the closed form.",
    )
    parser.add_argument(
        "--num-data", type=at_least_two, default=10_000, help="N, at least 2 (default 10,000)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of data and fits (default 0)")
    add_eval_particles(parser)
    deprecated_alias(parser, "--num-particles", "--eval-particles", "eval_particles", positive_int)
    add_progress(parser)
    parser.set_defaults(handler=handled("demo", _demo))


def _command_line(args: argparse.Namespace) -> str:
    parts = ["avi reproduce", args.name, f"--size {args.size}"]
    parts += [f"--num-seeds {args.num_seeds}"] if args.num_seeds else []
    parts += [f"--out {args.out}"]
    parts += [f"--fashion-mnist {args.fashion_mnist}"] if args.fashion_mnist else []
    return " ".join(parts)


def _reproduce(args: argparse.Namespace) -> int:
    log: Log = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if args.progress
        else (lambda _: None)
    )
    report = command.reproduce(
        args.name,
        args.size,
        args.num_seeds,
        args.out,
        args.fashion_mnist,
        log,
        _command_line(args),
        force=args.force,
    )
    print(report)
    return 0


def add_reproduce_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi reproduce NAME|all [--num-seeds S] [--quick|--size S] [--out DIR]``."""
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's experiments: CSVs, figures and REPORT.md",
        description=(
            "Fit every family of the paper's experiments over seeds and write, per experiment, "
            "the ELBO paths, a summary, figures, and DIR/REPORT.md comparing the run with the "
            "paper's findings."
        ),
        epilog="example: avi reproduce all --quick --out reproduction",
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        choices=(*registry.EXPERIMENTS, registry.ALL),
        help=f"one of {', '.join(registry.EXPERIMENTS)}, or {registry.ALL}",
    )
    add_num_seeds(parser, None, "number of seeds (default: 10 at full size, 2 with --quick)")
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
        "--fashion-mnist",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of FashionMNIST's IDX files for the deep generative "
        "model (default: scikit-learn's digits)",
    )
    deprecated_alias(parser, "--data", "--fashion-mnist", "fashion_mnist", Path)
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DIR (only files an earlier avi reproduce wrote are replaced)",
    )
    add_progress(parser)
    parser.set_defaults(size="full", handler=handled("reproduce", _reproduce))


def _bench(args: argparse.Namespace) -> int:
    if args.groups:
        from avi.paper.bench.groups import run as run_groups

        run_groups(args.out)
        return 0
    from avi.paper.bench.runner import run

    run(args.quick, args.out, args.only)
    return 0


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi bench [--quick] [--only PART ...] [--out DIR]``."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks against NumPyro; writes RESULTS.md",
        description="Time avi against NumPyro's SVI on the paper's models (about 10 minutes; "
        "--quick about 3) and write results.json and RESULTS.md into --out.",
    )
    parser.add_argument("--quick", action="store_true", help="N = 10^4 only, one repeat")
    parser.add_argument(
        "--groups",
        action="store_true",
        help="only the grouped-data benchmark (per-step cost against 10^3-10^5 groups; "
        "writes groups.json and GROUPS.md)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["linear", "nonlinear", "new-data", "memory", "cold", "certified"],
        metavar="PART",
        help="run only these parts (linear, nonlinear, new-data, memory, cold, certified: the "
        "default fit with its own stop rule), keeping the others' results from "
        "DIR/results.json",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks"), metavar="DIR", help="output folder"
    )
    parser.set_defaults(handler=handled("bench", _bench))
