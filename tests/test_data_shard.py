"""Data parallelism: four simulated CPU devices give the one-device result.

The same seed draws the same minibatches and Monte Carlo noise on any number of devices; only
the order of the floating-point reductions differs, so after 300 steps the variational
parameters agree to float32 rounding (1e-5 here; 1e-7 was measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, jax, numpy as np, avi
from avi.paper.experiments import linear
x = linear.simulate(1000, seed=0)
out = {"devices": len(jax.devices())}
for name, family, batch in [("factorized", avi.Factorized(), None),
                            ("amortized", avi.Amortized(avi.MLP(8)), None),
                            ("factorized-batch", avi.Factorized(), 100),
                            ("amortized-batch", avi.Amortized(avi.MLP(8)), 100)]:
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


@pytest.mark.parametrize("name", ["factorized", "amortized", "factorized-batch", "amortized-batch"])
def test_same_result_as_one_device(comparison, name):
    assert comparison[name]["local"] < 1e-5
    assert comparison[name]["global"] < 1e-5
    assert comparison[name]["data_sharding"] == ["data"]


def test_devices_that_do_not_divide_the_data_are_refused():
    import jax

    import avi
    from avi.data.shard import data_mesh
    from avi.paper.experiments import linear

    assert data_mesh(None, 7) is None  # one device in this process
    with pytest.raises(avi.AviError, match="do not divide N=7"):
        data_mesh(jax.devices() * 2, 7)
    assert avi.fit(linear.model, linear.simulate(7), num_steps=1, progress=False).num_steps == 1
