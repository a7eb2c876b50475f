"""NUTS references for the radon models (Minnesota), computed once and stored as test data.

What this computes
------------------
For each of ``avi.datasets.radon_intercept`` and ``avi.datasets.radon_slope`` on the Minnesota
data (``avi.datasets.radon("MN")``: 919 houses, 85 counties), NumPyro's NUTS with 4 chains of
2,000 warm-up and 5,000 kept draws each (seeds 0-3), and records in
``tests/data/references/radon_nuts.json``, per model, every latent site's posterior mean and
sd (per county for the county latents), its Monte Carlo standard error of the mean (sd /
sqrt(ESS)), the largest split R-hat and the smallest ESS, the divergences, the versions and the
wall time. The varying-slope model's county effects are sampled non-centred (NumPyro's
``LocScaleReparam(0)``, an exact change of variables: the posterior of a and b is the same),
since the centred funnel of a small sigma_b gave 28 divergences and an ESS of 410.

Why
---
The grouped-data tests check that avi's factorized and amortized fits of the radon models agree
with the exact posterior's county means within 0.5 posterior sd (0.3 for the population mean
and the floor effect). A NUTS run takes minutes; the tests only read the JSON.

Usage::

    .venv/bin/python scripts/radon_reference.py [--out tests/data/references/radon_nuts.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
import numpyro
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.handlers import reparam
from numpyro.infer import MCMC, NUTS
from numpyro.infer.reparam import LocScaleReparam

from avi.datasets import radon, radon_intercept, radon_slope

CHAINS, WARMUP, SAMPLES = 4, 2_000, 5_000


def run(model, reparameterized: tuple[str, ...] = ()) -> dict:
    data = radon("MN")
    sampled = reparam(model, config={name: LocScaleReparam(0) for name in reparameterized})
    args = (data.county, data.floor, data.num_counties)
    start = time.time()
    mcmc = MCMC(
        NUTS(sampled, target_accept_prob=0.9),
        num_warmup=WARMUP,
        num_samples=SAMPLES,
        num_chains=CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), *args, log_radon=data.log_radon)
    wall = time.time() - start
    draws = mcmc.get_samples(group_by_chain=True)
    sites = {}
    for name, value in draws.items():
        if name.endswith("_decentered"):
            continue
        value = np.asarray(value, np.float64)
        ess = np.asarray(effective_sample_size(value))
        rhat = np.asarray(split_gelman_rubin(value))
        flat = value.reshape((-1,) + value.shape[2:])
        sd = flat.std(axis=0)
        sites[name] = {
            "mean": flat.mean(axis=0).tolist(),
            "sd": sd.tolist(),
            "mcse": (sd / np.sqrt(ess)).tolist(),
            "max_rhat": float(np.max(rhat)),
            "min_ess": float(np.min(ess)),
        }
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return {
        "model_source": inspect.getsource(model),
        "non_centred": list(reparameterized),
        "sites": sites,
        "divergences": divergences,
        "wall_time_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default=str(Path(__file__).parents[1] / "tests/data/references/radon_nuts.json")
    )
    options = parser.parse_args()
    result = {
        "description": (
            f"NumPyro NUTS, {CHAINS} chains x ({WARMUP} warm-up + {SAMPLES} draws), "
            "target_accept_prob 0.9, on avi.datasets.radon('MN')"
        ),
        "versions": {
            "numpyro": numpyro.__version__,
            "jax": jax.__version__,
            "python": platform.python_version(),
        },
        "machine": platform.platform(),
        "models": {
            "radon_intercept": run(radon_intercept),
            "radon_slope": run(radon_slope, ("a", "b")),
        },
    }
    Path(options.out).write_text(json.dumps(result, indent=1))
    for name, entry in result["models"].items():
        worst = max(s["max_rhat"] for s in entry["sites"].values())
        fewest = min(s["min_ess"] for s in entry["sites"].values())
        print(f"{name}: {entry['wall_time_s']} s, max R-hat {worst:.4f}, min ESS {fewest:.0f}, "
              f"{entry['divergences']} divergences")


if __name__ == "__main__":
    main()
