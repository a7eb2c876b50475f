"""Phrases shared by the explanations: lists of words and of offsets along the data plate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def join(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def offsets_phrase(offsets: Iterable[int]) -> str:
    """'offset 0', 'offsets -1 and 0', or a range when there are many."""
    offsets = sorted(set(offsets))
    if len(offsets) > 6:
        return f"{len(offsets)} offsets from {offsets[0]} to {offsets[-1]}"
    noun = "offset" if len(offsets) == 1 else "offsets"
    return f"{noun} {join([str(o) for o in offsets])}"
