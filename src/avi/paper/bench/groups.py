"""Grouped data at scale: the per-step cost of minibatches of groups against the number of groups.

Simulated normal-means data (``avi.datasets``-style grouped model: a_j ~ N(mu, 0.7^2), y_js ~
N(a_j, 1), group sizes uniform on 1..20, rows shuffled) with J = 10^3, 10^4, 10^5 groups (about
10.5 J observations). For each J and family, a fit of ``steps`` steps on minibatches of B = 256
groups is run twice with the same shapes: the first compiles, the second reuses the compiled
program, and its optimisation seconds per step are the figure. The step reads B groups' padded
rows (B x 20), so its cost should not grow with J; F-VI's per-group tables grow with J in
memory, but a step reads and writes only the batch's rows.

``avi bench --groups`` writes ``groups.json`` and ``GROUPS.md`` into ``--out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import numpyro
import numpyro.distributions as dist

import avi
from avi.paper.bench.runner import machine

BATCH = 256
MAX_SIZE = 20


def normal_means(group, num_groups, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("groups", num_groups):
        a = numpyro.sample("a", dist.Normal(mu, 0.7))
    with numpyro.plate("obs", group.shape[0]):
        numpyro.sample("y", dist.Normal(a[group], 1.0), obs=y)


def simulate(num_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, MAX_SIZE + 1, num_groups)
    a = 0.5 + 0.7 * rng.normal(size=num_groups)
    group = np.repeat(np.arange(num_groups), sizes)
    group = group[rng.permutation(len(group))].astype(np.int32)
    y = (a[group] + rng.normal(size=len(group))).astype(np.float32)
    return group, y


def measure(num_groups: int, label: str, family, steps: int) -> dict:
    group, y = simulate(num_groups)
    seconds = []
    for seed in (0, 1):
        start = time.perf_counter()
        fit = avi.fit(
            normal_means, group, num_groups, y=y, family=family, batch_size=BATCH,
            num_steps=steps, seed=seed, progress=False,
        )
        seconds.append((time.perf_counter() - start, fit.wall_time))
    return {
        "num_groups": num_groups,
        "num_observations": int(len(y)),
        "family": label,
        "steps": steps,
        "first_call_s": seconds[0][0],
        "us_per_step": 1e6 * seconds[1][1] / steps,
    }


def run(out: Path, sizes: tuple[int, ...] = (1_000, 10_000, 100_000), steps: int = 2_000) -> dict:
    start = time.perf_counter()
    families = {"factorized": "factorized", "amortized MLP(32)": avi.Amortized(avi.MLP(32))}
    rows = []
    for num_groups in sizes:
        for label, family in families.items():
            rows.append(measure(num_groups, label, family, steps))
            print(rows[-1], flush=True)
    results = {
        "command": "avi bench --groups",
        "machine": machine(),
        "batch_groups": BATCH,
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "groups.json").write_text(json.dumps(results, indent=2))
    write_report(results, out)
    return results


def write_report(results: dict, out: Path) -> None:
    m = results["machine"]
    lines = [
        "# Grouped data: per-step cost against the number of groups",
        "",
        f"Measured by `{results['command']}` on {m['date']}: {m['cpu']}, {m['cores']} cores, "
        f"devices {', '.join(m['devices'])}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Run time {results['seconds']:.0f} s. See avi/paper/bench/groups.py.",
        "",
        f"Minibatches of {results['batch_groups']} groups (group sizes 1..{MAX_SIZE}); "
        "optimisation microseconds per step of a warm call (the compiled program reused).",
        "",
        "| groups J | observations | family | steps | us/step | first call s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['num_groups']:,} | {r['num_observations']:,} | {r['family']} | {r['steps']} | "
            f"{r['us_per_step']:.0f} | {r['first_call_s']:.1f} |"
        )
    (out / "GROUPS.md").write_text("\n".join(lines) + "\n")
