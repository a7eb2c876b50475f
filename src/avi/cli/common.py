"""What every command shares: the one error handler, option types, and options spelt the same
way in every command (``--data``, ``--plate``, ``--seed`` a seed, ``--num-seeds`` a count,
``--eval-particles`` the draws of a final ELBO, ``--out``, ``--no-progress``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from avi.errors import AviError, Interrupted

Handler = Callable[[argparse.Namespace], int]

USER_ERROR_STATUS = 2

INTERRUPTED_STATUS = 130
"""Exit status after Ctrl-C (128 + SIGINT), with what was done said on stderr."""


def handled(command: str, handler: Handler) -> Handler:
    """``handler`` with the errors a user causes (bad input, unreadable or unwritable files)
    printed as one line, ``avi COMMAND: error: ...``, and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Interrupted as interrupted:
            print(f"avi {command}: {interrupted}", file=sys.stderr)
            return INTERRUPTED_STATUS
        except (AviError, OSError) as error:
            text = str(error) if isinstance(error, AviError) else f"{type(error).__name__}: {error}"
            print(f"avi {command}: error: {text}", file=sys.stderr)
            return USER_ERROR_STATUS

    return run


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1.

    Raises:
        argparse.ArgumentTypeError: ``text`` is below 1 (argparse names the option).
        ValueError: ``text`` is not an integer (argparse reports it as an invalid value).
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def at_least_two(text: str) -> int:
    """An argparse type: an integer of at least 2 (a sample size whose spread is defined).

    Raises:
        argparse.ArgumentTypeError: ``text`` is below 2.
        ValueError: ``text`` is not an integer.
    """
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text}: give at least 2 data")
    return value


def seed(text: str) -> int:
    """An argparse type: a seed, an integer in [0, 2**32)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text}: give an integer in [0, 2**32)")
    return value


class _Deprecated(argparse.Action):
    """A hidden old spelling of an option: works, and says which name to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"avi: {option_string} is deprecated; write {self.new}.", file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: str, dest: str, type: Callable[[str], Any]
) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the option ``new``."""
    parser.add_argument(old, dest=dest, type=type, action=_Deprecated, new=new)


def add_model_arguments(
    parser: argparse.ArgumentParser, positional: bool = True, plate: bool = True
) -> None:
    """FILE.py:NAME (positional, or ``--model``), ``--data`` and (with ``plate``) ``--plate``
    and ``--groups``."""
    help_text = "the NumPyro model: the function NAME in the Python file FILE.py"
    if positional:
        parser.add_argument("model", metavar="FILE.py:NAME", help=help_text)
    else:
        parser.add_argument("--model", required=True, metavar="FILE.py:NAME", help=help_text)
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="the model's arguments: .npz (arg0, arg1, ... positional, others by name), .npy "
        "(the only argument) or .csv (a column per argument, named like it; NAME[0], NAME[1], "
        "... for a matrix argument)",
    )
    if plate:
        parser.add_argument(
            "--plate", default=None, metavar="NAME", help="name of the data plate, if ambiguous"
        )
        parser.add_argument(
            "--groups",
            default=None,
            metavar="NAME",
            help="grouped data: the argument holding each observation's group index, if "
            "ambiguous (grouped models are recognised without it)",
        )


def add_num_seeds(parser: argparse.ArgumentParser, default: int | None, help_text: str) -> None:
    """``--num-seeds`` (old spelling ``--seeds``)."""
    parser.add_argument(
        "--num-seeds", type=positive_int, default=default, metavar="S", help=help_text
    )
    deprecated_alias(parser, "--seeds", "--num-seeds", "num_seeds", positive_int)


def add_eval_particles(parser: argparse.ArgumentParser) -> None:
    """``--eval-particles``: draws of each final ELBO estimate."""
    parser.add_argument(
        "--eval-particles",
        type=positive_int,
        default=1000,
        metavar="P",
        help="Monte Carlo draws of each final ELBO estimate (default 1000)",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
