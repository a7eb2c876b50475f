"""Cold start: a new user's first fit in a fresh process, avi against NumPyro's SVI.

Each repeat starts one fresh Python process per script, in alternating order, and each times
its own ``import``, then the fit: the paper's linear model (Eq. 8) at N = 10^4, written out in
the script (importing :mod:`avi.paper` would load pandas). avi fits its default family
(``"amortized"``, which runs the structure check first) as a new user would, with its stop rule
and certificate, and for 300 steps; NumPyro fits AutoNormal with init scale 0.1 and Adam 3e-2
(its best setting on this model) for 300 steps, ``svi.run`` compiled whole. The parent records
each process's wall time from launch to exit (interpreter start included) and the exact gap of
the fitted moments to the closed-form optimum (saved by the process after its timed fit).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

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

_AVI_MOMENTS = """
import sys
lam = fit.problem.family.local_params(fit.params.local, fit.problem.local_data, None)
np.savez(sys.argv[1], theta=np.r_[np.asarray(fit.params.global_loc)[0],
         np.exp(np.asarray(fit.params.global_log_scale)[0])],
         z_mean=np.asarray(lam["loc"])[:, 0], z_sd=np.exp(np.asarray(lam["log_scale"])[:, 0]),
         converged=fit.converged, steps=fit.num_steps)
"""

SCRIPTS = {
    "avi, default fit (stop rule, certified)": (
        "import avi",
        _MODEL + "fit = avi.fit(model, x, progress=False)\n"
        "import jax; jax.block_until_ready(fit.params); fit.certificate\n",
        _AVI_MOMENTS,
    ),
    f"avi, {STEPS} steps": (
        "import avi",
        _MODEL + f"fit = avi.fit(model, x, num_steps={STEPS}, progress=False)\n"
        "import jax; jax.block_until_ready(fit.params)\n",
        _AVI_MOMENTS,
    ),
    "NumPyro SVI": (
        "import numpyro\nfrom numpyro.infer import SVI, Trace_ELBO\n"
        "from numpyro.infer.autoguide import AutoNormal\nimport jax",
        _MODEL
        + "svi = SVI(model, AutoNormal(model, init_scale=0.1), numpyro.optim.Adam(3e-2), "
        "Trace_ELBO())\n"
        f"result = svi.run(jax.random.PRNGKey(0), {STEPS}, x, progress_bar=False)\n"
        "jax.block_until_ready(result.params)\n",
        f"""
import sys
p = result.params
np.savez(sys.argv[1], theta=np.r_[p["theta_auto_loc"], p["theta_auto_scale"]],
         z_mean=np.asarray(p["z_auto_loc"]), z_sd=np.asarray(p["z_auto_scale"]),
         converged=False, steps={STEPS})
""",
    ),
}
"""Library -> (its imports, the fit after them, untimed: the fitted moments saved to argv[1]).
avi's default fit also reads its certificate, which a fit of fixed steps computes on demand."""

_TIMED = """
import json, time
start = time.perf_counter()
{imports}
imported = time.perf_counter()
{fit}
done = time.perf_counter()
print(json.dumps({{"import": imported - start, "fit": done - imported}}))
{moments}
"""


def run_once(name: str) -> dict[str, float]:
    """One fresh process of ``name``'s script: import, fit and whole-process seconds, and the
    exact gap of the fitted moments to the closed-form optimum (computed here, untimed)."""
    from avi.paper.experiments import linear

    imports, fit, moments = SCRIPTS[name]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "moments.npz")
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", _TIMED.format(imports=imports, fit=fit, moments=moments), path],
            check=True,
            capture_output=True,
            text=True,
        )
        process = time.perf_counter() - start
        saved = dict(np.load(path))
    times = json.loads(completed.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(0)
    x = 1.155 * rng.standard_normal(NUM_DATA) + 2.43 * rng.standard_normal(NUM_DATA)
    x = x.astype(np.float32)
    theta = linear.Gaussian(float(saved["theta"][0]), float(saved["theta"][1]) ** 2)
    z = linear.Gaussian(saved["z_mean"].astype(np.float64), saved["z_sd"].astype(np.float64) ** 2)
    gap = linear.factorized_optimum(x).elbo - linear.elbo(x, theta, z)
    return {
        **times,
        "first_fit": times["import"] + times["fit"],
        "process": process,
        "gap": float(gap),
        "converged": float(saved["converged"]),
        "steps": float(saved["steps"]),
    }


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
