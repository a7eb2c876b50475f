"""``avi bench``: run the benchmarks and write RESULTS.md and results.json."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import jax

import avi
from avi.paper.bench import certified, cold, linear, memory, nonlinear, throughput
from avi.paper.bench.report import PARTS, write_report
from avi.paper.bench.timing import summarize
from avi.paper.experiments import linear as linear_model
from avi.paper.experiments import nonlinear as nonlinear_model


def machine() -> dict[str, object]:
    """The machine and package versions the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    versions = {
        name: metadata.version(name) for name in ("jax", "jaxlib", "numpyro", "optax", "equinox")
    }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def run_linear(sizes: list[int], repeats: int, budget: float, quick: bool) -> list[dict]:
    """Time to within 1e-4 nats per datum of the closed-form optimum, per method and N.

    The learning-rate grid of the NumPyro baselines and the repeats run at the smallest N;
    larger N run once with NumPyro at Adam 1e-2 (the budget caps the slow configurations).
    At N = 10^6 the 100-draw configurations are left out: one of their steps makes 10^8
    model evaluations, and the first compiled chunk alone outlasts the budget.
    """
    rows = []
    for num_data in sizes:
        x = linear_model.simulate(num_data, seed=0)
        target = linear.GAP_PER_DATUM * num_data
        smallest = num_data == min(sizes)
        for method in linear.methods(quick or not smallest, many_draws=num_data < 1_000_000):
            runs = [
                method.run(x, target, 30_000, budget, seed)
                for seed in range(repeats if smallest else 1)
            ]
            summary = summarize(runs)
            rows.append({"num_data": num_data, "method": method.name, **summary.as_dict()})
            print(f"  N={num_data:>8} {method.name}: {summary.median}", flush=True)
    return rows


def run_nonlinear(num_data: int, repeats: int, budget: float) -> list[dict]:
    """A-VI (MLP width 16) against F-VI: time to the 1% and the strict criterion."""
    x = nonlinear_model.simulate(num_data, seed=0)
    reference = nonlinear.reference_elbo(x)
    rows = []
    for name, family in (
        ("avi amortized MLP(16), defaults", avi.Amortized(avi.MLP(width=16))),
        ("avi factorized, defaults", avi.Factorized()),
    ):
        runs = [nonlinear.run(x, family, reference, budget, seed) for seed in range(repeats)]
        for criterion, chosen in (
            ("1% (paper)", [r[0] for r in runs]),
            ("strict", [r[1] for r in runs]),
        ):
            summary = summarize(chosen)
            rows.append(
                {
                    "num_data": num_data,
                    "method": name,
                    "criterion": criterion,
                    "reference_elbo": reference,
                    **summary.as_dict(),
                }
            )
            print(f"  {name} {criterion}: {summary.median}", flush=True)
    return rows


def _measure(part: str, quick: bool) -> object:
    sizes = [10_000] if quick else [10_000, 1_000_000]
    repeats, budget = (1, 20.0) if quick else (3, 15.0)
    if part == "linear":
        return run_linear(sizes, repeats, budget, quick)
    if part == "nonlinear":
        return run_nonlinear(10_000, repeats, budget)
    if part == "new-data":
        return throughput.measure(100_000 if quick else 1_000_000, 3 if quick else 7, not quick)
    if part == "cold":
        return cold.measure(2 if quick else 5)
    if part == "certified":
        return certified.measure(sizes, repeats)
    memory_sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    return [memory.measure(n, family) for n in memory_sizes for family in ("amortized", "factorized")]


def run(quick: bool, out: Path, only: list[str] | None = None) -> dict:
    """Run the benchmarks (every part, or ``only`` those, kept beside the others' earlier
    results in ``out``/results.json); write results.json and RESULTS.md under ``out``."""
    start = time.perf_counter()
    command = "avi bench" + (" --quick" if quick else "")
    if only:
        results = json.loads((out / "results.json").read_text())
    else:
        repeats, budget = (1, 20.0) if quick else (3, 15.0)
        results = {
            "command": command,
            "machine": machine(),
            "repeats": repeats,
            "budget": budget,
        }
    out.mkdir(parents=True, exist_ok=True)
    for part in only or list(PARTS):
        print(part, flush=True)
        part_start = time.perf_counter()
        results[PARTS[part]] = _measure(part, quick)
        if only:
            results.setdefault("reruns", {})[part] = {
                "command": f"{command} --only {' '.join(only)}",
                "date": time.strftime("%Y-%m-%d"),
                "machine": machine(),
                "seconds": time.perf_counter() - part_start,
            }
            # each part kept as soon as it is measured: a later part's failure loses nothing
            (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    if not only:
        results["seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    write_report(results, out)
    return results
