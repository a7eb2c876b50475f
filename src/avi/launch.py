"""Start the same script in several processes on localhost that form one JAX runtime.

For tests and benchmarks of the several-process path on one machine (on several hosts each
host starts its own process; see the README's "Several processes and hosts").

Each process runs ``script`` with ``sys.argv[1:] = [process_id, num_processes, port, *args]``
and, when ``num_processes > 1``, joins the others through ``jax.distributed.initialize`` (the
coordinator on a free localhost port, gloo collectives on the CPU; :data:`PRELUDE`). Every
process prints one JSON line last; :func:`run_processes` returns them in process order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence

PRELUDE = """
import sys
import jax
process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=120,
    )
"""


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_processes(
    script: str,
    num_processes: int,
    devices_per_process: int = 1,
    args: Sequence[str] = (),
    timeout: float = 600,
) -> list[dict]:
    """Run ``PRELUDE + script`` in ``num_processes`` processes with ``devices_per_process``
    CPU devices each, and return each process's last output line as JSON.

    Raises:
        RuntimeError: a process failed or outlived ``timeout`` seconds (all are then killed).
    """
    port = str(free_port())
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        "JAX_PLATFORMS": "cpu",
    }
    with tempfile.TemporaryDirectory() as folder:
        logs = [
            (open(f"{folder}/{i}.out", "w+"), open(f"{folder}/{i}.err", "w+"))  # noqa: SIM115
            for i in range(num_processes)
        ]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", PRELUDE + script, str(i), str(num_processes), port, *args],
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
            for i, (out, err) in enumerate(logs)
        ]
        try:  # files, not pipes: a process blocked on a full pipe would stall the others
            for process in processes:
                process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"processes outlived {timeout} s") from error
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        outputs = []
        for process, (out, err) in zip(processes, logs, strict=True):
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
            out.close(), err.close()
            if process.returncode:
                raise RuntimeError(f"process failed ({process.returncode}):\n{stderr[-4000:]}")
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outputs
