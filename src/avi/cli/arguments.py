"""Argument types shared by the ``avi`` subcommands."""

from __future__ import annotations

import argparse


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
