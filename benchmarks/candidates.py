"""A candidate for fewer gradient evaluations to a certified optimum, measured and not kept:
a deterministic objective (the ELBO on S fixed draws, a sample-average approximation)
optimised by L-BFGS (``optax.lbfgs`` with its zoom line search), then judged by avi's own
certificate and against the closed form of the paper's linear model (Eq. 8).

The fixed draws make the objective smooth and deterministic, so a quasi-Newton method
converges in few iterations, but to the optimum of the S-draw objective, not of the ELBO:
its error is the certificate's to find. Run::

    python benchmarks/candidates.py            # writes benchmarks/CANDIDATES.md

and compare with the default fit's time in RESULTS.md ("The default fit with its own stop
rule"), measured on the same machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import avi
from avi.paper.bench.linear import exact_gap
from avi.paper.experiments import linear
from avi.vi.certify import certify
from avi.vi.elbo import elbo_draws

FAMILIES = {
    "default (MLP(32))": "amortized",
    "Amortized(Polynomial(1))": avi.Amortized(avi.Polynomial(1)),
}


def saa_lbfgs(x: np.ndarray, family: object, draws: int, iterations: int) -> dict:
    """L-BFGS on the ELBO of ``draws`` fixed draws from avi's initial point (one step of a
    fit), compiled whole; the time of a second (warm) call, then the certificate and the exact
    gap."""
    num_data = x.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = avi.fit(linear.model, x, family=family, num_steps=1, progress=False, seed=0)
    problem = start.problem
    trainable, static = eqx.partition(start.params, eqx.is_inexact_array)
    key = jax.random.PRNGKey(7)

    def loss(t):
        values = elbo_draws(key, eqx.combine(t, static), problem, None, draws, False)
        return -jnp.mean(values) / num_data

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def run(t):
        def body(carry, _):
            t, state = carry
            value, grad = value_and_grad(t, state=state)
            updates, state = solver.update(
                grad, state, t, value=value, grad=grad, value_fn=loss
            )
            return (optax.apply_updates(t, updates), state), None

        (t, _), _ = jax.lax.scan(body, (t, solver.init(t)), None, length=iterations)
        return t

    jax.block_until_ready(run(trainable))
    begin = time.perf_counter()
    fitted = jax.block_until_ready(run(trainable))
    seconds = time.perf_counter() - begin
    params = eqx.combine(fitted, static)
    evidence = certify(jax.random.PRNGKey(1), params, problem)
    optimum = linear.factorized_optimum(x)
    sd = float(np.exp(np.asarray(params.global_log_scale)[0]))
    return {
        "seconds": seconds,
        "certified": evidence.certified,
        "gap": float(exact_gap(x, optimum.elbo, params, problem)),
        "sd_error": abs(sd / float(np.sqrt(np.ravel(optimum.theta.var)[0])) - 1),
        "evidence": str(evidence),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-data", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "CANDIDATES.md")
    options = parser.parse_args()
    x = linear.simulate(options.num_data, seed=0)
    lines = [
        "# A candidate measured and not kept: L-BFGS on a fixed-draw ELBO",
        "",
        f"Measured by `python benchmarks/candidates.py` on {time.strftime('%Y-%m-%d')}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}. The paper's linear model at N = {options.num_data:,}; "
        "warm L-BFGS time (compiled whole, second call); then avi's certificate "
        "(every block decided) and the exact gap to the closed-form F-VI optimum.",
        "",
        "| family | fixed draws | iterations | L-BFGS s | certified | gap (nats) | "
        "q(theta) sd error | certificate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, family in FAMILIES.items():
        for draws in (8, 32, 128):
            for iterations in (50, 200):
                row = saa_lbfgs(x, family, draws, iterations)
                lines.append(
                    f"| {label} | {draws} | {iterations} | {row['seconds']:.3f} | "
                    f"{'yes' if row['certified'] else 'no'} | {row['gap']:.3f} | "
                    f"{row['sd_error']:.1%} | {row['evidence']} |"
                )
                print(lines[-1], flush=True)
    options.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
