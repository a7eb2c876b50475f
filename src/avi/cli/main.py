"""Command-line interface: ``avi demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from avi.options import at_least_two_text as at_least_two


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
        draws = result.elbo_draws(args.num_particles, seed=args.seed + 1)
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
        f"\nELBO: {args.num_particles} draws; the gap uses the same draws for every family "
        "(common random numbers), so its stderr is that of the difference.\n"
        f"Closed-form gap of the constant family: {linear.constant_gap(x):.2f}."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``avi`` command."""
    parser = argparse.ArgumentParser(
        prog="avi", description="Amortized variational inference for NumPyro models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the paper's linear model with three families")
    demo.add_argument(
        "--num-data", type=at_least_two, default=10_000, help="N, at least 2 (default 10,000)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-particles", type=int, default=1000, help="draws for the ELBO")
    demo.add_argument("--no-progress", dest="progress", action="store_false")
    demo.set_defaults(handler=_demo)
    from avi.paper.reproduce import add_reproduce_command

    add_reproduce_command(commands)
    from avi.cli.analysis import add_analysis_commands
    from avi.paper.bench.runner import add_bench_command

    add_bench_command(commands)
    add_analysis_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avi`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
