"""XLA settings avi makes before JAX starts its CPU backend.

jaxlib 0.10.2's XLA:CPU hands some multiply-and-reduce fusions of rank-7 and rank-8 arrays to
its experimental YNNPACK ("ynn") fusion, which crashes the process (a segmentation fault on a
worker thread, reported wherever Python happens to be: often a later compilation) or hangs
(jax-ml/jax#39257 and #40412; fixed in XNNPACK after that release). avi's programs vmap over
draws, rows, groups and parameters, and reach such ranks. For that jaxlib only, and only where
the user's ``XLA_FLAGS`` does not choose the ynn fusions itself, avi turns them off
(``--xla_cpu_experimental_ynn_fusion_type=``, the empty list), appending to ``XLA_FLAGS`` before
JAX reads it. It cannot take effect in a process that has already run a JAX computation before
``import avi``.
"""

from __future__ import annotations

import os
from importlib import metadata

AFFECTED_JAXLIB = frozenset({"0.10.2"})
"""jaxlib releases with the crash (the flag is unknown to older ones, which reject it)."""

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def avoid_known_crashes() -> None:
    """Append :data:`YNN_FLAG` to ``XLA_FLAGS`` under an affected jaxlib, unless the user's
    ``XLA_FLAGS`` already sets the ynn fusion types."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    if version in AFFECTED_JAXLIB:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
