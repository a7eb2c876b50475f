"""Memory against N: variational parameter bytes and the resident memory a fit adds.

Each fit runs in a fresh Python process. Importing JAX and compiling set a high-water mark of
about 1 GB that a small fit never exceeds, so the figure that tracks N is the growth of the
resident set (VmRSS) from just before ``avi.fit`` (data simulated, modules imported) to just
after it, with the fit alive; the process's high-water mark (VmHWM) is reported beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import json, sys
import avi
from avi.paper.experiments import linear

def status(field):
    with open("/proc/self/status") as f:
        return 1024 * int(next(l.split()[1] for l in f if l.startswith(field)))

num_data, family = int(sys.argv[1]), sys.argv[2]
x = linear.simulate(num_data, seed=0)
chosen = avi.Amortized(avi.MLP(width=16)) if family == "amortized" else avi.Factorized()
before = status("VmRSS:")
fit = avi.fit(linear.model, x, family=chosen, num_steps=200, progress=False)
print(json.dumps({"parameters": fit.num_parameters, "parameter_bytes": 4 * fit.num_parameters,
                  "rss_growth_bytes": status("VmRSS:") - before,
                  "peak_rss_bytes": status("VmHWM:")}))
"""


def measure(num_data: int, family: str) -> dict[str, int]:
    """Parameter count and bytes (float32) and the process's peak RSS for one fit."""
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(num_data), family],
        check=True,
        capture_output=True,
        text=True,
    )
    return {
        "num_data": num_data,
        "family": family,
        **json.loads(out.stdout.strip().splitlines()[-1]),
    }
