"""Cold start: a new user's first fit in a fresh process, avi against NumPyro's SVI.

Each repeat starts two fresh Python processes, one per library, in alternating order, and each
times its own ``import``, then the fit: the paper's linear model (Eq. 8) at N = 10^4, 300 steps,
written out in the script (importing :mod:`avi.paper` would load pandas). avi fits its default
family (``"amortized"``, which runs the structure check first); NumPyro fits AutoNormal with init
scale 0.1 and Adam 3e-2 (its best setting on this model), ``svi.run`` compiled whole. The parent
also records each process's wall time from launch to exit (interpreter start included).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

STEPS = 300
NUM_DATA = 10_000

_MODEL = f"""
import numpy as np
import numpyro
import numpyro.distributions as dist


def model(x, tau=1.155, sigma=2.43):
    theta = numpyro.sample("theta", dist.ImproperUniform(dist.constraints.real, (), ()))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(theta + tau * z, sigma), obs=x)


rng = np.random.default_rng(0)
x = (1.155 * rng.standard_normal({NUM_DATA}) + 2.43 * rng.standard_normal({NUM_DATA}))
x = x.astype(np.float32)
"""

SCRIPTS = {
    "avi": (
        "import avi",
        _MODEL + f"fit = avi.fit(model, x, num_steps={STEPS}, progress=False)\n"
        "import jax; jax.block_until_ready(fit.params)\n",
    ),
    "NumPyro SVI": (
        "import numpyro\nfrom numpyro.infer import SVI, Trace_ELBO\n"
        "from numpyro.infer.autoguide import AutoNormal\nimport jax",
        _MODEL
        + "svi = SVI(model, AutoNormal(model, init_scale=0.1), numpyro.optim.Adam(3e-2), "
        "Trace_ELBO())\n"
        f"result = svi.run(jax.random.PRNGKey(0), {STEPS}, x, progress_bar=False)\n"
        "jax.block_until_ready(result.params)\n",
    ),
}
"""Library -> (its imports, the fit after them)."""

_TIMED = """
import json, time
start = time.perf_counter()
{imports}
imported = time.perf_counter()
{fit}
done = time.perf_counter()
print(json.dumps({{"import": imported - start, "fit": done - imported}}))
"""


def run_once(name: str) -> dict[str, float]:
    """One fresh process of ``name``'s script: import, fit and whole-process seconds."""
    imports, fit = SCRIPTS[name]
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", _TIMED.format(imports=imports, fit=fit)],
        check=True,
        capture_output=True,
        text=True,
    )
    process = time.perf_counter() - start
    times = json.loads(completed.stdout.strip().splitlines()[-1])
    return {**times, "first_fit": times["import"] + times["fit"], "process": process}


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "minimum": min(values),
        "maximum": max(values),
    }


def measure(repeats: int) -> dict:
    """Median, minimum and maximum over ``repeats`` fresh processes per library, with the
    load average (1, 5, 15 min) before and after."""
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SCRIPTS}
    for repeat in range(repeats):
        order = list(SCRIPTS) if repeat % 2 == 0 else list(reversed(SCRIPTS))
        for name in order:
            runs[name].append(run_once(name))
            print(f"  {name}: {runs[name][-1]}", flush=True)
    return {
        "num_data": NUM_DATA,
        "steps": STEPS,
        "repeats": repeats,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": [
            {
                "method": name,
                **{part: _spread([r[part] for r in done]) for part in done[0]},
            }
            for name, done in runs.items()
        ],
    }
