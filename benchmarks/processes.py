"""Several processes on one streamed file: each process's share of the data and its time per step.

    python benchmarks/processes.py [--rows 33554432] [--steps 1000] [--processes 1 2 4]

Writes the paper's linear model's data (``--rows`` float32 rows) to a temporary ``.npy`` file
and fits it streamed, ``avi.Amortized(avi.MLP(16))`` with minibatches of 1,024, in 1, 2 and 4
processes on localhost joined by ``jax.distributed`` (one CPU device each, gloo collectives;
:mod:`avi.launch`). Each process reports

* the memory of the data it holds: the resident part of its mapping of the file (``Rss`` of the
  mapping in ``/proc/self/smaps``: the pages it has read) and the rows it read;
* its time per step: a warm fit of ``--steps`` steps (the compile is paid by a first, short
  fit) divided by its steps;

and the fit's q(theta) (mean and sd), the same on every process. Results go to
``benchmarks/processes.json`` and ``benchmarks/PROCESSES.md`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from avi.launch import run_processes
from avi.paper.experiments import linear

SCRIPT = """
import json, time
import numpy as np
import avi
from avi.paper.experiments import linear

rows_read = [0]

class Counting(np.memmap):
    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            rows_read[0] += key.size
        return super().__getitem__(key)

path, steps = sys.argv[4], int(sys.argv[5])
x = np.load(path, mmap_mode="r").view(Counting)
family = avi.Amortized(avi.MLP(16))
avi.fit(linear.model, x, family=family, batch_size=1024, num_steps=100, progress=False)
fit = avi.fit(linear.model, x, family=family, batch_size=1024, num_steps=steps, progress=False)
converged = fit.converged  # the certificate's reads, which several processes make in the fit

def mapped_kib(name):
    kib, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(name)
        elif inside and line.startswith("Rss:"):
            kib += int(line.split()[1])
    return kib

print(json.dumps({
    "process": process_id,
    "data_rss_mib": mapped_kib(path) / 1024,
    "rows_read": rows_read[0],
    "seconds_per_step": fit.wall_time / fit.num_steps,
    "converged": converged,
    "theta_mean": float(np.asarray(fit.params.global_loc)[0]),
    "theta_sd": float(np.exp(np.asarray(fit.params.global_log_scale)[0])),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2**25)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    options = parser.parse_args()
    results = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "jax": jax.__version__,
            "load_before": os.getloadavg()[0],
        },
        "rows": options.rows,
        "file_mib": options.rows * 4 / 2**20,
        "steps": options.steps,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, linear.simulate(options.rows, seed=0).astype(np.float32))
        for count in options.processes:
            outputs = run_processes(SCRIPT, count, 1, [str(path), str(options.steps)], 3600)
            results["runs"][str(count)] = outputs
            print(count, json.dumps(outputs), flush=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    (options.out / "processes.json").write_text(json.dumps(results, indent=1))
    (options.out / "PROCESSES.md").write_text(report(results))


def report(results: dict) -> str:
    """The Markdown table of a run."""
    machine = results["machine"]
    lines = [
        "# Several processes on one streamed file",
        "",
        f"`python benchmarks/processes.py`: the paper's linear model, {results['rows']:,} rows "
        f"({results['file_mib']:.0f} MiB of float32) memory-mapped, `avi.Amortized(avi.MLP(16))`, "
        f"minibatches of 1,024, {results['steps']:,} warm steps; one CPU device per process, "
        "`jax.distributed` on localhost with gloo collectives. Machine: "
        f"{machine['processor']}, {machine['cores']} cores, JAX {machine['jax']}"
        + (
            f", load average {machine['load_before']:.1f} before and {machine['load_after']:.1f} "
            "after the run"
            if "load_before" in machine
            else ""
        )
        + ".",
        "",
        "Data resident: the pages of the file mapped into the process, the memory its share of "
        "the data takes (the rows its devices hold are the only ones it reads, beyond the "
        "1,024-row prefix every process traces the model on). The fits differ between rows "
        "because minibatches are stratified over the devices (2 and 4 processes draw other "
        "rows than 1); none is certified after these few steps.",
        "",
        "| processes | data resident per process (MiB, max) | time per step (ms, max over "
        "processes) | q(theta) mean, sd |",
        "|---|---|---|---|",
    ]
    for count, outputs in results["runs"].items():
        first = outputs[0]
        lines.append(
            f"| {count} | {max(o['data_rss_mib'] for o in outputs):.1f} | "
            f"{1e3 * max(o['seconds_per_step'] for o in outputs):.2f} | "
            f"{first['theta_mean']:.4f}, {first['theta_sd']:.5f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rewrite PROCESSES.md from processes.json
        folder = Path(__file__).parent
        (folder / "PROCESSES.md").write_text(
            report(json.loads((folder / "processes.json").read_text()))
        )
    else:
        main()
