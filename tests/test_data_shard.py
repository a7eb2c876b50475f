"""Data parallelism: four simulated CPU devices give the one-device result.

In full-batch mode the same seed draws the same Monte Carlo noise on any number of devices;
only the order of the floating-point reductions differs, so after 300 steps the variational
parameters agree to float32 rounding (1e-5 here; 1e-7 was measured). Minibatches are
stratified over the devices (each device draws its share from its own rows), so minibatch fits
depend on the number of devices; ``test_data_processes`` checks that they do not depend on how
the devices are spread over processes, and the compiled step here that no device reads another
device's rows: its only collectives are the sums of the ELBO and of the gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, re, jax, equinox as eqx, numpy as np, avi
from avi.paper.experiments import linear
x = linear.simulate(1000, seed=0)
OP = r"\\s(?:all-reduce|all-gather|all-to-all|collective-permute)(?:-start)?\\("
out = {"devices": len(jax.devices())}
for name, family, batch in [("factorized", avi.Factorized(), None),
                            ("amortized", avi.Amortized(avi.MLP(8)), None)]:
    many = avi.fit(linear.model, x, family=family, batch_size=batch, num_steps=300, progress=False)
    one = avi.fit(linear.model, x, family=family, batch_size=batch, num_steps=300, progress=False,
                  devices=jax.devices()[:1])
    (loc_many, scale_many), (loc_one, scale_one) = many.local_factors(), one.local_factors()
    out[name] = {
        "local": float(np.max(np.abs(np.asarray(loc_many) - np.asarray(loc_one)))
                       + np.max(np.abs(np.asarray(scale_many) - np.asarray(scale_one)))),
        "global": float(np.max(np.abs(np.asarray(many.params.global_loc)
                                      - np.asarray(one.params.global_loc)))),
        "data_sharding": list(many.problem.args[0].sharding.spec),
    }
for name, family in [("factorized-batch", avi.Factorized()),
                     ("amortized-batch", avi.Amortized(avi.MLP(8)))]:
    algorithm = avi.vi.build(linear.model, x, family=family, batch_size=100)
    key = jax.random.PRNGKey(0)
    state = algorithm.init(key)
    batch = algorithm.draw_batch(key)
    step = eqx.filter_jit(lambda a, s, k, b: eqx.filter(a.step(k, s, b), eqx.is_array))
    program = step.lower(algorithm, state, key, batch).compile().compiled.as_text()
    collectives = [line for line in program.splitlines()
                   if re.search(OP, line)]
    shapes = [re.findall(r"[a-z0-9]+\\[([0-9,]*)\\]", re.split(OP, line.split("=", 1)[1])[0])
              for line in collectives]
    out[name] = {"index": list(batch.index.shape), "collectives": len(collectives),
                 "dims": sorted({int(d) for group in shapes for s in group for d in s.split(",") if d})}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def comparison() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_four_devices_are_used(comparison):
    assert comparison["devices"] == 4


@pytest.mark.parametrize("name", ["factorized", "amortized"])
def test_same_result_as_one_device(comparison, name):
    assert comparison[name]["local"] < 1e-5
    assert comparison[name]["global"] < 1e-5
    assert comparison[name]["data_sharding"] == ["data"]


@pytest.mark.parametrize("name", ["factorized-batch", "amortized-batch"])
def test_each_device_reads_only_its_rows(comparison, name):
    """The stratified batch's gathers stay on their device: no collective carries the batch's
    100 rows, a device's 25 or a device's 250 data (a plain gather from rows split over devices
    compiles to a masked gather and an all-reduce of the whole batch, f32[100,1])."""
    assert comparison[name]["index"] == [4, 25]
    assert comparison[name]["collectives"] >= 1  # the sums of the ELBO and the gradients
    assert not {1000, 250, 100, 25} & set(comparison[name]["dims"])


def test_devices_that_do_not_divide_the_data_are_refused():
    import jax

    import avi
    from avi.data.shard import data_mesh
    from avi.paper.experiments import linear

    assert data_mesh(None, 7) is None  # one device in this process
    with pytest.raises(avi.AviError, match="do not divide N=7"):
        data_mesh(jax.devices() * 2, 7)
    assert avi.fit(linear.model, linear.simulate(7), num_steps=1, progress=False).num_steps == 1
