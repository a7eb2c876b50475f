"""avi.xla_flags: jaxlib 0.10.2's XLA:CPU crashes on rank-7 multiply-reduce fusions handed to
its ynn fusion (jax-ml/jax#40412); ``import avi`` turns those fusions off before JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest

from avi.xla_flags import AFFECTED_JAXLIB, YNN_FLAG

CRASH = """
import os, jax, jax.numpy as jnp
shape = (3, 1, 2, 2, 8, 8, 8)
u = jax.random.normal(jax.random.PRNGKey(0), shape, dtype=jnp.float32)
v = jax.random.normal(jax.random.PRNGKey(1), shape, dtype=jnp.float32)
jax.block_until_ready(jax.jit(lambda a, b: jnp.sum(a * b, axis=3))(u, v))
print(os.environ.get("XLA_FLAGS", ""))
"""


def _run(prelude: str, flags: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flags is not None:
        env["XLA_FLAGS"] = flags
    return subprocess.run(
        [sys.executable, "-c", prelude + CRASH], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(
    metadata.version("jaxlib") not in AFFECTED_JAXLIB, reason="this jaxlib has no such crash"
)
def test_import_avi_keeps_the_known_xla_crash_away_and_respects_the_users_flags():
    crashed = _run("", None)
    assert crashed.returncode != 0  # the crash is real in this jaxlib (a SIGSEGV, -11)
    guarded = _run("import avi\n", "--xla_cpu_enable_fast_math=false")
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    assert guarded.stdout.split() == ["--xla_cpu_enable_fast_math=false", YNN_FLAG]
    own = _run("import avi\n", "--xla_cpu_experimental_ynn_fusion_type=")
    assert own.returncode == 0 and own.stdout.split() == ["--xla_cpu_experimental_ynn_fusion_type="]
