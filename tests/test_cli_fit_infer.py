"""``avi fit`` then ``avi infer`` through the installed ``avi`` command, on files the test
writes; data files in .npz, .npy and .csv; user errors as one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import avi
from avi.cli.inference import posterior_summaries
from avi.cli.inputs import check_signature, load_data, load_model
from avi.cli.main import main

AVI = Path(sys.executable).with_name("avi")

MODEL = textwrap.dedent(
    """
    import numpyro
    import numpyro.distributions as dist

    def model(x, y):
        noise = numpyro.sample("noise", dist.HalfNormal(1.0))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(x, 1.0))
            numpyro.sample("y", dist.Normal(z, noise), obs=y)
    """
)


def _table(seed: int, num_data: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num_data).astype(np.float32)
    return pd.DataFrame({"x": x, "y": x + rng.normal(size=num_data).astype(np.float32)})


def _avi(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AVI), *argv], check=False, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``avi fit`` run once: the model file, the data files and the fit's folder."""
    root = tmp_path_factory.mktemp("cli")
    paths = {"model": root / "model.py", "train": root / "train.csv", "new": root / "new.csv"}
    paths["model"].write_text(MODEL)
    _table(0, 20).to_csv(paths["train"], index=False)
    _table(1, 6).to_csv(paths["new"], index=False)
    paths["fit"] = root / "fit"
    done = _avi(
        "fit", f"{paths['model']}:model", "--data", str(paths["train"]), "--family", "mlp:4",
        "--num-steps", "3", "--eval-particles", "2", "--out", str(paths["fit"]), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "converged:" in done.stdout and "q of the globals" in done.stdout
    return paths


def test_fit_writes_the_saved_fit_a_summary_and_a_figure(fitted):
    written = {p.name for p in fitted["fit"].iterdir()}
    assert written == {"fit.json", "arrays.eqx", "summary.txt", "elbo.png"}
    assert "noise" in (fitted["fit"] / "summary.txt").read_text()


def test_infer_writes_the_posterior_of_new_data_as_the_loaded_fit_gives_it(
    fitted, tmp_path, capsys
):
    model = f"{fitted['model']}:model"
    argv = ["infer", str(fitted["fit"]), "--model", model, "--data", str(fitted["new"])]
    options = ["--num-samples", "50", "--seed", "4"]
    done = _avi(*argv, "--out", str(tmp_path / "post.npz"), *options)  # a fresh process
    assert done.returncode == 0, done.stderr
    assert "posterior of 6 data (z)" in done.stdout
    assert main([*argv, "--out", str(tmp_path / "post.csv"), *options]) == 0
    assert "posterior of 6 data (z)" in capsys.readouterr().out
    loaded = avi.load(fitted["fit"], load_model(model))
    new = _table(1, 6)
    expected = posterior_summaries(
        loaded, (), {"x": new.x.to_numpy(), "y": new.y.to_numpy()}, 50, 4
    )
    with np.load(tmp_path / "post.npz") as stored:
        assert sorted(stored.files) == sorted(f"z/{k}" for k in expected["z"])
        for key, value in expected["z"].items():
            np.testing.assert_array_equal(stored[f"z/{key}"], value)
    table = pd.read_csv(tmp_path / "post.csv", index_col="datum")
    assert list(table.columns) == ["z_mean", "z_sd", "z_q05", "z_q50", "z_q95"]
    np.testing.assert_allclose(table["z_mean"], expected["z"]["mean"], rtol=1e-6)


WRONG_MODEL = MODEL.replace("dist.Normal(x, 1.0))", "dist.LogNormal(x, 1.0))")


def test_infer_refuses_another_model_in_one_line(fitted, tmp_path, capsys):
    other = tmp_path / "other.py"
    other.write_text(WRONG_MODEL)
    argv = ["infer", str(fitted["fit"]), "--model", f"{other}:model", "--data", str(fitted["new"])]
    assert main([*argv, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avi infer: error:") and err.count("\n") == 1
    assert "site 'z' has support positive, it was real" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{fit}"], "it already holds a fit; add --force"),
        (["--out", "{tmp}/new", "--family", "mlp:x"], "--family: 'mlp:x' needs an integer"),
        (["--out", "{tmp}/new", "--family", "constant", "--window=-1,0"], "Drop --window"),
        (
            ["--out", "{tmp}/new", "--data", "{tmp}/bad.csv"],
            "'w' is not an argument of the model model(x, y)",
        ),
    ],
)
def test_fit_refuses_bad_input_before_fitting(fitted, tmp_path, capsys, argv, message):
    pd.DataFrame({"x": [1.0, 2.0], "w": [0.0, 1.0]}).to_csv(tmp_path / "bad.csv", index=False)
    filled = [a.format(fit=fitted["fit"], tmp=tmp_path) for a in argv]
    base = ["fit", f"{fitted['model']}:model", "--data", str(fitted["train"])]
    assert main([*base, *filled, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avi fit: error:") and err.count("\n") == 1
    assert message in err


def test_csv_columns_name_the_models_arguments(tmp_path):
    path = tmp_path / "data.csv"
    pd.DataFrame({"x[0]": [1.0, 2.0], "x[1]": [3.0, 4.0], "y": [5, 6]}).to_csv(path, index=False)
    args, kwargs = load_data(str(path))
    assert args == () and sorted(kwargs) == ["x", "y"]
    np.testing.assert_array_equal(kwargs["x"], [[1.0, 3.0], [2.0, 4.0]])
    pd.DataFrame({"arg0": [1.0], "y": [2.0]}).to_csv(path, index=False)
    args, kwargs = load_data(str(path))
    assert len(args) == 1 and list(kwargs) == ["y"]

    def model(x, y=None):
        return x, y

    check_signature(model, (args, kwargs), "data.csv")
    unknown = r"'w' is not an argument of the model model\(x, y=None\)"
    with pytest.raises(avi.AviError, match=unknown):
        check_signature(model, (args, {**kwargs, "w": 1}), "data.csv")
    too_many = r"holds arg0, arg1, y, but the model is model\(x, y=None\)"
    with pytest.raises(avi.AviError, match=too_many):
        check_signature(model, ((1, 2), kwargs), "data.csv")


def test_text_columns_are_refused(tmp_path):
    path = tmp_path / "data.csv"
    pd.DataFrame({"x": [1.0, 2.0], "label": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(avi.AviError, match="'label' are not numbers"):
        load_data(str(path))
