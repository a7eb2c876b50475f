"""Several processes on one data set: each process's share of the data and its time per step.

    python benchmarks/processes.py [--rows 33554432] [--steps 1000] [--processes 1 2 4]
                                   [--memory-rows 8388608] [--only streamed in-memory]

Writes the paper's linear model's data (``--rows`` float32 rows) to a temporary ``.npy`` file
and fits it streamed, ``avi.Amortized(avi.MLP(16))`` with minibatches of 1,024, in 1, 2 and 4
processes on localhost joined by ``jax.distributed`` (one CPU device each, gloo collectives;
:mod:`avi.launch`). Each process reports

* the memory of the data it holds: the resident part of its mapping of the file (``Rss`` of the
  mapping in ``/proc/self/smaps``: the pages it has read) and the rows it read;
* its time per step: a warm fit of ``--steps`` steps (the compile is paid by a first, short
  fit) divided by its steps;

and the fit's q(theta) (mean and sd), the same on every process.

The in-memory part gives every process the same in-memory array of ``--memory-rows`` rows and
fits it full-batch with ``avi.Factorized()`` (20 steps, then the certificate, which a fit over
several processes computes at its end and one process on ``fit.converged``). Each process reports
the peak of its resident memory (``VmHWM``) above its resident memory just before the fit (after
the data were made and a small fit compiled the common programs): what the fit's share of the
data costs it (features, per-datum arguments on the device, the tables and their optimiser
moments, the step's and the certificate's temporaries). One process on half the rows is run
too: each of two processes should cost what it costs.

Results go to ``benchmarks/processes.json`` and ``benchmarks/PROCESSES.md`` with the machine.
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


IN_MEMORY = """
import json, time
import numpy as np
import avi
from avi.paper.experiments import linear

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

x = linear.simulate(int(sys.argv[4]), seed=0)
avi.fit(linear.model, x[:1024], family=avi.Factorized(), num_steps=5, progress=False)
before = status("VmRSS")
start = time.perf_counter()
fit = avi.fit(linear.model, x, family=avi.Factorized(), num_steps=20, progress=False)
converged = fit.converged
print(json.dumps({
    "process": process_id,
    "peak_above_start_mib": status("VmHWM") - before,
    "seconds": time.perf_counter() - start,
    "converged": converged,
    "theta_mean": float(np.asarray(fit.params.global_loc)[0]),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2**25)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--memory-rows", type=int, default=2**23)
    parser.add_argument("--only", nargs="+", default=["streamed", "in-memory"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    options = parser.parse_args()
    previous = options.out / "processes.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    if "in-memory" in options.only:
        results["in_memory"] = in_memory(options.memory_rows, options.processes)
    if "streamed" in options.only:
        results.update(streamed(options))
    (options.out / "processes.json").write_text(json.dumps(results, indent=1))
    (options.out / "PROCESSES.md").write_text(report(results))


def _machine() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "load_before": os.getloadavg()[0],
    }


def in_memory(rows: int, processes: list[int]) -> dict:
    """The in-memory part: ``processes`` on ``rows`` rows, and one process on half of them."""
    results = {"machine": _machine(), "rows": rows, "runs": {}}
    for count, size in [*((c, rows) for c in processes), (1, rows // 2)]:
        outputs = run_processes(IN_MEMORY, count, 1, [str(size)], 3600)
        results["runs"][f"{count} x {size}"] = outputs
        print(count, size, json.dumps(outputs), flush=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    return results


def streamed(options: argparse.Namespace) -> dict:
    """The streamed part: the memory-mapped file read by 1, 2 and 4 processes."""
    results = {
        "machine": _machine(),
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
    return results


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
    if "in_memory" in results:
        lines += _in_memory_report(results["in_memory"])
    return "\n".join(lines) + "\n"


def _in_memory_report(part: dict) -> list[str]:
    machine = part["machine"]
    lines = [
        "",
        "# Several processes on one in-memory array",
        "",
        f"The paper's linear model, {part['rows']:,} rows in memory (the same array in every "
        "process), full-batch `avi.Factorized()`, 20 steps and the certificate. Machine: "
        f"{machine['processor']}, {machine['cores']} cores, JAX {machine['jax']}, load average "
        f"{machine['load_before']:.1f} before and {machine['load_after']:.1f} after. Memory: "
        "each process's peak resident memory above its resident memory just before the fit "
        "(the user's array and the compiled common programs excluded); each process of several "
        "computes its rows' features, sends its devices its rows of the arguments, starts its "
        "rows' tables and keeps its rows' share of the certificate's gradient draws. What is "
        "not split: the model's trace on all data (before the data are split) and, at the end, "
        "the result in every process (the tables gathered, the problem rebuilt whole).",
        "",
        "| processes x rows | peak above start per process (MiB, max) | fit and certificate "
        "(s, max) | certified |" + (" before (MiB) |" if "before" in part else ""),
        "|---|---|---|---|" + ("---|" if "before" in part else ""),
    ]
    peak = lambda outputs: max(o["peak_above_start_mib"] for o in outputs)
    before = part.get("before", {}).get("runs", {})
    for name, outputs in part["runs"].items():
        lines.append(
            f"| {name} | {peak(outputs):.0f} | {max(o['seconds'] for o in outputs):.1f} | "
            f"{outputs[0]['converged']} |"
            + (f" {peak(before[name]):.0f} |" if name in before else (" |" if before else ""))
        )
    if before:
        lines += ["", f"Before: {part['before']['note']} ({part['before']['commit']})."]
    return lines


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rewrite PROCESSES.md from processes.json
        folder = Path(__file__).parent
        (folder / "PROCESSES.md").write_text(
            report(json.loads((folder / "processes.json").read_text()))
        )
    else:
        main()
