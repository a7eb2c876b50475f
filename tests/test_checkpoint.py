"""Interruption and checkpoints: Ctrl-C returns the partial fit, a checkpoint resumes it to the
very result of the uninterrupted fit (same seed), a killed process loses at most the steps
since the last write, and a checkpoint of another fit is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import avi
from avi.paper.experiments import linear

X = linear.simulate(300, seed=0)
OPTIONS = {"family": "factorized", "num_steps": 1_500, "seed": 3, "progress": False}


def assert_same_fit(a, b):
    for left, right in zip(
        [a.params.global_loc, a.params.global_log_scale, a.params.local["loc"]],
        [b.params.global_loc, b.params.global_log_scale, b.params.local["loc"]],
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))
    np.testing.assert_array_equal(a.history.elbo, b.history.elbo)
    assert a.num_steps == b.num_steps


@pytest.fixture(scope="module")
def uninterrupted():
    return avi.fit(linear.model, X, **OPTIONS)


def interrupt_at(step):
    def callback(done, params, problem):
        if done >= step:
            raise KeyboardInterrupt

    return callback


def test_ctrl_c_returns_the_partial_fit(tmp_path):
    with pytest.warns(avi.ConvergenceWarning, match="interrupted at step 600"):
        partial = avi.fit(linear.model, X, callback=interrupt_at(700), **OPTIONS)
    assert partial.stop_reason == "interrupted" and not partial.converged
    assert partial.num_steps == 600 and partial.history.step[-1] == 600


def test_a_resumed_fit_is_the_uninterrupted_fit(tmp_path, uninterrupted):
    path = tmp_path / "fit.ckpt"
    with pytest.warns(avi.ConvergenceWarning, match="interrupted"):
        avi.fit(linear.model, X, checkpoint=path, callback=interrupt_at(700), **OPTIONS)
    assert path.exists() and not path.with_name("fit.ckpt.tmp").exists()
    resumed = avi.fit(linear.model, X, checkpoint=path, **OPTIONS)
    assert_same_fit(resumed, uninterrupted)
    again = avi.fit(linear.model, X, checkpoint=path, **OPTIONS)  # finished: returned as saved
    assert_same_fit(again, uninterrupted)


def test_a_stop_rule_fit_resumes_to_the_same_certified_result(tmp_path):
    options = {"family": "factorized", "seed": 1, "progress": False, "max_steps": 4_000}
    whole = avi.fit(linear.model, X, **options)
    path = tmp_path / "rule.ckpt"
    stop_at = int(whole.history.step[len(whole.history.step) // 2])
    with pytest.warns(avi.ConvergenceWarning, match="interrupted"):
        avi.fit(linear.model, X, checkpoint=path, callback=interrupt_at(stop_at), **options)
    resumed = avi.fit(linear.model, X, checkpoint=path, **options)
    assert resumed.stop_reason == whole.stop_reason
    assert_same_fit(resumed, whole)


def test_a_checkpoint_of_another_fit_is_refused(tmp_path):
    path = tmp_path / "fit.ckpt"
    avi.fit(linear.model, X, checkpoint=path, **{**OPTIONS, "num_steps": 200})
    with pytest.raises(avi.AviError, match="belongs to another fit.*data"):
        avi.fit(linear.model, X + 1, checkpoint=path, **{**OPTIONS, "num_steps": 200})
    with pytest.raises(avi.AviError, match="belongs to another fit.*family"):
        avi.fit(linear.model, X, checkpoint=path, **{**OPTIONS, "family": "constant"})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(avi.AviError, match="cannot be read"):
        avi.fit(linear.model, X, checkpoint=path, **{**OPTIONS, "num_steps": 200})


CHILD = textwrap.dedent(
    """
    import signal, sys, warnings
    import avi
    from avi.paper.experiments import linear

    # Python's own Ctrl-C handler even when the suite runs as a background job (which starts
    # its processes with SIGINT ignored: the child would never see the signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.simplefilter("ignore")
    x = linear.simulate(300, seed=0)
    fit = avi.fit(linear.model, x, family="factorized", num_steps=10_000_000, seed=3,
                  progress=False, checkpoint=sys.argv[1], checkpoint_interval=0.2)
    print("ended", fit.stop_reason, fit.num_steps, flush=True)
    """
)


def run_and_signal(tmp_path: Path, sig: int) -> tuple[Path, subprocess.CompletedProcess | None]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "child.ckpt"
    process = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    assert process.poll() is None, process.communicate()
    os.kill(process.pid, sig)
    out, err = process.communicate(timeout=120)
    return path, (process.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_signalled_process_resumes_to_the_uninterrupted_fit(tmp_path, sig):
    path, (code, out, err) = run_and_signal(tmp_path, sig)
    if sig == signal.SIGINT:
        assert code == 0 and "ended interrupted" in out, (code, out, err[-2000:])
    else:
        assert code == -signal.SIGKILL
    options = {**OPTIONS, "num_steps": 10_000_000}  # the child's budget: it is stopped long before
    with pytest.warns(avi.ConvergenceWarning, match="interrupted"):
        partial = avi.fit(linear.model, X, checkpoint=path, callback=interrupt_at(0), **options)
    saved_step = partial.num_steps
    assert 0 < saved_step < 10_000_000
    resumed = avi.fit(linear.model, X, checkpoint=path, **{**options, "num_steps": saved_step + 300})
    reference = avi.fit(linear.model, X, **{**options, "num_steps": saved_step + 300})
    assert_same_fit(resumed, reference)


def test_ctrl_c_in_compare_keeps_the_fits_done():
    families = {"factorized": avi.Factorized(), "constant": avi.Constant()}
    calls = {"count": 0}

    def second_family(done, params, problem):
        calls["count"] += 1
        if problem.family.name == "constant":
            raise KeyboardInterrupt

    with pytest.raises(avi.Interrupted, match="family 'constant'") as caught:
        avi.compare(linear.model, X, families=families, num_steps=300, callback=second_family)
    fits = caught.value.fits
    assert fits["factorized"][0].num_steps == 300
    assert fits["constant"][0].stop_reason == "interrupted"


def test_ctrl_c_in_reproduce_stops_it_and_says_what_was_written(tmp_path, monkeypatch):
    """The first fit of the experiment is interrupted: reproduce stops there (no further fit
    starts) and the command line exits with 130 and says where the finished work is."""
    from avi.cli.main import main
    from avi.paper.reproduce import run as reproduce_run

    real_fit = avi.fit
    calls = []

    def stop(*_):
        raise KeyboardInterrupt

    def fit_with_interrupt(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **{**kwargs, "callback": stop})

    monkeypatch.setattr(reproduce_run.avi, "fit", fit_with_interrupt)
    out = tmp_path / "r"
    code = main(["reproduce", "linear", "--quick", "--num-seeds", "1", "--out", str(out)])
    assert code == 130 and len(calls) == 1
