"""The ``avi`` command: one parser, every subcommand registered from this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from avi.cli.analysis import add_analysis_commands
from avi.cli.fitting import add_fit_command
from avi.cli.inference import add_infer_command
from avi.cli.paper import add_bench_command, add_demo_command, add_reproduce_command

DESCRIPTION = """\
Amortized variational inference for NumPyro models.

A model is a NumPyro function in a Python file, named FILE.py:NAME; its data are an .npz, .npy
or .csv file whose entries (columns) are named after the model's arguments. Start with:

  avi demo                                             the paper's linear model, four families
  avi check model.py:model --data train.csv            can an encoder match F-VI on this model?
  avi fit model.py:model --data train.csv --out fit    fit once, save the fit
  avi infer fit --model model.py:model --data new.csv --out posterior.csv
                                                       posteriors of new data, any time later

Every command explains its options: avi COMMAND --help."""


INTERRUPTED_STATUS = 130
"""The shell's status of a command stopped by Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``avi`` command."""
    parser = argparse.ArgumentParser(
        prog="avi", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(commands)
    add_fit_command(commands)
    add_infer_command(commands)
    add_analysis_commands(commands)
    add_reproduce_command(commands)
    add_bench_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avi`` command: the exit status (2 for a user's error, printed as
    one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"avi {args.command}: interrupted.", file=sys.stderr)
        return INTERRUPTED_STATUS


if __name__ == "__main__":
    sys.exit(main())
