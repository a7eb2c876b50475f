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
