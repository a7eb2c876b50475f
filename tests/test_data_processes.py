"""Several processes forming one JAX runtime (``jax.distributed``) fit as one process does.

Two processes of one CPU device each, joined by ``jax.distributed.initialize`` on localhost
(gloo collectives), run the same script on the same arguments. Minibatches are stratified over
the devices that hold the data (:func:`avi.data.batch.draw_batch`), so the draws depend on the
number of devices, not on how they are spread over processes: 2 processes x 1 device take the
very steps of 1 process x 2 devices, and agree with it to float32 rounding (the order of the
reductions differs; 1e-5 after 300 steps, as in ``test_data_shard``). Full-batch F-VI has no
draws of data and agrees with one device as well. The streamed fit's reads are recorded: each
process reads the rows of its own half of the file only (beyond the 1,024-row prefix every
process traces the model on).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from avi.paper.experiments import linear
from avi.launch import run_processes

NUM_DATA = 1000

SCRIPT = """
import json
import numpy as np
import avi
from avi.paper.bench.groups import normal_means
from avi.paper.experiments import linear, saw

reads = []

class Recording(np.memmap):
    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            reads.append(np.asarray(key).ravel())
        return super().__getitem__(key)

x = linear.simulate(%(n)d, seed=0)
streamed = np.load(sys.argv[4], mmap_mode="r").view(Recording)
out = {}
for name, data, family, batch in [
    ("factorized", x, avi.Factorized(), None),
    ("amortized-batch", x, avi.Amortized(avi.MLP(8)), 100),
    ("amortized-streamed", streamed, avi.Amortized(avi.MLP(8)), 100),
]:
    fit = avi.fit(linear.model, data, family=family, batch_size=batch, num_steps=300,
                  progress=False)
    loc, scale = fit.local_factors() if name != "amortized-streamed" else fit.local_factors(x)
    out[name] = {
        "global_loc": np.asarray(fit.params.global_loc).tolist(),
        "global_log_scale": np.asarray(fit.params.global_log_scale).tolist(),
        "local_loc": np.asarray(loc).ravel().tolist(),
        "local_scale": np.asarray(scale).ravel().tolist(),
        "elbo": float(fit.elbo(100, seed=1).mean) if data is x else None,
        "converged": bool(fit.converged),
        "blocks": {b.name: [b.size, b.gain, b.stderr] for b in fit.certificate.blocks},
    }
rng = np.random.default_rng(0)
group = rng.integers(0, 200, 3000).astype(np.int32)
y = (rng.normal(size=200)[group] + rng.normal(size=3000)).astype(np.float32)
window = avi.Amortized(avi.MLP(8), inputs=avi.Window(offsets=(-1, 0)))
corners = [  # a family that reads neighbours' rows; groups split over the processes
    ("window", lambda: avi.fit(saw.model, saw.simulate(1000, seed=0), family=window,
                               num_steps=200, progress=False)),
    ("grouped", lambda: avi.fit(normal_means, group, 200, y=y, family=avi.Amortized(avi.MLP(8)),
                                groups="group", num_steps=200, progress=False)),
]
for name, fitted in corners if sys.argv[5:] == ["corners"] else []:
    fit = fitted()
    loc, scale = fit.local_factors()
    out[name] = {
        "global_loc": np.asarray(fit.params.global_loc).tolist(),
        "global_log_scale": np.asarray(fit.params.global_log_scale).tolist(),
        "local_loc": np.asarray(loc).ravel().tolist(),
        "local_scale": np.asarray(scale).ravel().tolist(),
        "converged": bool(fit.converged),
    }
try:
    avi.fit(linear.model, x, family=avi.Factorized(), num_steps=10, progress=False,
            checkpoint=sys.argv[4] + f".{process_id}.ckpt")
    out["checkpoint"] = "accepted"
except avi.AviError as error:
    out["checkpoint"] = str(error)
rows = np.concatenate(reads) if reads else np.zeros(0, int)
out["reads"] = {"count": int(rows.size), "min": int(rows.min()), "max": int(rows.max())}
out["devices"] = len(jax.devices())
print(json.dumps(out))
""" % {"n": NUM_DATA}

FITS = ["factorized", "amortized-batch", "amortized-streamed"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    path = tmp_path_factory.mktemp("streamed") / "x.npy"
    np.save(path, linear.simulate(NUM_DATA, seed=0))
    return {
        "2 processes x 1 device": run_processes(SCRIPT, 2, 1, [str(path), "corners"]),
        "1 process x 2 devices": run_processes(SCRIPT, 1, 2, [str(path), "corners"]),
        "1 process x 1 device": run_processes(SCRIPT, 1, 1, [str(path)]),
    }


def _difference(a: dict, b: dict) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a[key]) - np.asarray(b[key]))))
        for key in ["global_loc", "global_log_scale", "local_loc", "local_scale"]
    )


def test_every_process_holds_the_same_result(runs):
    first, second = runs["2 processes x 1 device"]
    assert first["devices"] == second["devices"] == 2
    for name in FITS:
        assert first[name] == second[name]


@pytest.mark.parametrize("name", FITS)
def test_two_processes_take_the_steps_of_one_process_with_two_devices(runs, name):
    (many,), (one,) = runs["2 processes x 1 device"][:1], runs["1 process x 2 devices"]
    assert _difference(many[name], one[name]) < 1e-5
    if many[name]["elbo"] is not None:
        assert abs(many[name]["elbo"] - one[name]["elbo"]) < 1e-2
    assert many[name]["converged"] == one[name]["converged"]


@pytest.mark.parametrize("name", FITS)
def test_the_certificate_is_the_one_of_one_process(runs, name):
    """Each process keeps only its rows' share of the per-datum tables' gradient draws and the
    certificate's inner products are added across processes: the evidence is one process's
    (the same draws; float rounding apart)."""
    (many,), (one,) = runs["2 processes x 1 device"][:1], runs["1 process x 2 devices"]
    assert many[name]["blocks"].keys() == one[name]["blocks"].keys()
    for block, (size, gain, stderr) in one[name]["blocks"].items():
        other_size, other_gain, other_stderr = many[name]["blocks"][block]
        assert other_size == size
        assert other_gain == pytest.approx(gain, rel=1e-3, abs=1e-6 * size)
        assert other_stderr == pytest.approx(stderr, rel=1e-3, abs=1e-6 * size)


@pytest.mark.parametrize("name", ["window", "grouped"])
def test_window_inputs_and_groups_take_the_steps_of_one_process_with_two_devices(runs, name):
    """Window inputs read neighbouring rows (every process prepares all rows' inputs); groups
    are the data axis of a grouped model: both split over processes as over devices."""
    (many,), (one,) = runs["2 processes x 1 device"][:1], runs["1 process x 2 devices"]
    assert _difference(many[name], one[name]) < 1e-5
    assert many[name]["converged"] == one[name]["converged"]


def test_full_batch_f_vi_agrees_with_one_device(runs):
    (many,), (one,) = runs["2 processes x 1 device"][:1], runs["1 process x 1 device"]
    assert _difference(many["factorized"], one["factorized"]) < 1e-5


def test_each_process_reads_only_its_half_of_the_file(runs):
    half = NUM_DATA // 2
    for process, out in enumerate(runs["2 processes x 1 device"]):
        assert out["reads"]["count"] > 0
        assert process * half <= out["reads"]["min"] and out["reads"]["max"] < (process + 1) * half
    (one,) = runs["1 process x 2 devices"]
    assert one["reads"]["min"] < half <= one["reads"]["max"]


def test_a_checkpoint_is_refused_across_processes_by_name(runs):
    for out in runs["2 processes x 1 device"]:
        assert out["checkpoint"].startswith("checkpoint=...: a fit over several processes")
    assert runs["1 process x 2 devices"][0]["checkpoint"] == "accepted"


def _benchmark_script(name: str) -> str:
    """A script of ``benchmarks/processes.py`` (the measurement the benchmark reports)."""
    path = Path(__file__).parents[1] / "benchmarks" / "processes.py"
    spec = importlib.util.spec_from_file_location("processes_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.slow
def test_each_of_two_processes_pays_well_under_one_process_per_datum():
    """In-memory data, full-batch F-VI with its certificate: each of two processes converts,
    places, starts and draws over only its rows. What one more datum costs each of two
    processes in peak resident memory (the slope between 2^21 and 2^22 rows, so that fixed
    costs cancel) is about half of what it costs one process: 0.61 measured, above 0.5 by what
    is not split (the trace on all data, the result in every process). The bound fails when
    the fit's per-datum arrays or the certificate's draws of them are whole in every process
    (a ratio of 1 or more); it does not tell this session's change from the commit before it
    (0.72 there, where the transient whole copies did not set the peak)."""
    script = _benchmark_script("IN_MEMORY")
    peak = lambda outputs: max(out["peak_above_start_mib"] for out in outputs)
    cost = {
        (count, rows): peak(run_processes(script, count, 1, [str(rows)]))
        for count in (1, 2)
        for rows in (2**21, 2**22)
    }
    slope = {count: cost[count, 2**22] - cost[count, 2**21] for count in (1, 2)}
    assert slope[1] > 0
    assert slope[2] < 0.8 * slope[1], cost
