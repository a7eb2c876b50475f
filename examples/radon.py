"""The radon models (Gelman and Hill 2006) with factorized and amortized VI, and held-out counties.

The models are written as users write them (``avi.datasets.models``): county latents in a
``county`` plate, houses in a ``house`` plate, joined by the county index. avi recognises the
grouping, fits F-VI and A-VI (a set encoder reading each county's houses), reports the
amortization gap, and infers counties held out of training in one encoder pass.

    .venv/bin/python examples/radon.py            # Minnesota, 919 houses in 85 counties
    .venv/bin/python examples/radon.py --state all  # 12,573 houses in 386 counties
    .venv/bin/python examples/radon.py --counties 20 --max-steps 300  # a tiny run (the test's)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import avi
from avi.datasets import radon, radon_intercept, radon_slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", default="MN", choices=["MN", "all"])
    parser.add_argument("--held-out", type=int, default=5, help="counties held out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counties", type=int, default=None,
                        help="keep only the first K counties (a quicker run)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on each fit's steps")
    options = parser.parse_args()
    data = radon(options.state)
    if options.counties is not None:
        data = data.subset(np.arange(options.counties))
    caps = {} if options.max_steps is None else {"max_steps": options.max_steps}
    args = (data.county, data.floor, data.num_counties)
    print(f"radon ({options.state}): {len(data.log_radon):,} houses in {data.num_counties} counties")
    print(avi.check(radon_intercept, *args, log_radon=data.log_radon).explanation, "\n")

    fits = {}
    for model in (radon_intercept, radon_slope):
        for label, family in [("F-VI", "factorized"), ("A-VI", avi.Amortized(avi.MLP(32)))]:
            start = time.time()
            fitted = avi.fit(model, *args, log_radon=data.log_radon, family=family,
                             seed=options.seed, progress=False, **caps)
            elbo = fitted.elbo()
            fits[model.__name__, label] = fitted
            print(f"{model.__name__:16s} {label}: ELBO {elbo}, {fitted.num_steps} steps, "
                  f"converged={fitted.converged}, {time.time() - start:.0f} s")
        factorized, amortized = (fits[model.__name__, k].elbo() for k in ("F-VI", "A-VI"))
        gap = factorized.mean - amortized.mean
        stderr = np.hypot(factorized.stderr, amortized.stderr)
        print(f"{model.__name__:16s} amortization gap: {gap:.2f} +- {stderr:.2f} nats\n")

    # Held-out counties: drop them from training, infer them from their houses in one pass.
    sizes = np.bincount(data.county, minlength=data.num_counties)
    rng = np.random.default_rng(options.seed)
    out = np.sort(rng.choice(np.flatnonzero(sizes >= 10), options.held_out, replace=False))
    kept = np.setdiff1d(np.arange(data.num_counties), out)
    train, new = data.subset(kept), data.subset(out)
    amortized = avi.fit(radon_intercept, train.county, train.floor, train.num_counties,
                        log_radon=train.log_radon, family=avi.Amortized(avi.MLP(32)),
                        seed=options.seed, progress=False)
    new_args, new_y = (new.county, new.floor, new.num_counties), new.log_radon
    start = time.time()
    inferred = amortized.posterior(*new_args, log_radon=new_y)["a"]
    seconds = time.time() - start
    reference = fits["radon_intercept", "F-VI"].posterior()["a"]
    flags = avi.reliability(amortized, *new_args, log_radon=new_y)
    print(f"held-out counties {out.tolist()} inferred in one encoder pass ({seconds:.2f} s):")
    print("county  houses  encoder mean (sd)   F-VI on all data   difference in F-VI sd  flagged")
    for k, county in enumerate(out):
        ref_mean, ref_sd = float(reference.loc[county]), float(reference.scale[county])
        mean, sd = float(inferred.loc[k]), float(inferred.scale[k])
        print(f"{county:6d}  {sizes[county]:6d}  {mean:7.3f} ({sd:.3f})   {ref_mean:7.3f} ({ref_sd:.3f})"
              f"   {(mean - ref_mean) / ref_sd:+8.2f}              {bool(flags.flagged[k])}")


if __name__ == "__main__":
    main()
