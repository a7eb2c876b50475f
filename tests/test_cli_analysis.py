"""``avi check`` and ``avi compare`` on a model file and an .npz the test writes."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
import pytest

import avi
from avi.cli.analysis import add_analysis_commands, parse_families
from avi.paper.experiments import linear

MODEL = textwrap.dedent(
    """
    import numpyro
    import numpyro.distributions as dist


    def model(x, scale=1.0):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, scale))
            numpyro.sample("x", dist.Normal(mu + z, 1.0), obs=x)
    """
)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avi")
    add_analysis_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[str, str]:
    """(FILE.py, DATA.npz): x positional, scale as a 0-d keyword."""
    model_file = tmp_path / "hier.py"
    model_file.write_text(MODEL)
    data_file = tmp_path / "data.npz"
    x = linear.simulate(60, seed=0, tau=1.0, sigma=1.0)
    np.savez(data_file, arg0=x, scale=np.float32(1.5))
    return str(model_file), str(data_file)


def test_check_prints_the_verdict(files, capsys):
    model_file, data_file = files
    assert run(["check", f"{model_file}:model", "--data", data_file]) == 0
    out = capsys.readouterr().out
    assert "verdict: simple-hierarchical" in out
    assert "encoder inputs (offsets): (0,)" in out
    assert "Theorem 3.4" in out


def test_compare_prints_the_table(files, capsys, tmp_path):
    model_file, data_file = files
    argv = [
        "compare",
        f"{model_file}:model",
        "--data",
        data_file,
        "--families",
        "poly:1",
        "--num-steps",
        "300",
        "--eval-particles",
        "200",
        "--no-progress",
        "--figures",
        str(tmp_path / "figures"),
    ]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "added avi.Factorized() as the reference 'F-VI'" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["family", "elbo"])
    assert header.split()[-1] == "num_parameters"
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.split()[:1] in (["F-VI"], ["poly:1"])
    }
    assert rows["F-VI"][5] == "reference"
    assert rows["poly:1"][-1] == "5"
    assert rows["F-VI"][-1] == str(2 * 60 + 2)
    assert (tmp_path / "figures" / "elbo.png").is_file()
    assert (tmp_path / "figures" / "per_datum_gaps_poly_1.png").is_file()


def test_family_tokens():
    window = avi.Window((-1, 0))
    families = parse_families("factorized, constant,amortized,mlp:4,poly:2,polynomial:0", window)
    assert families == {
        "factorized": avi.Factorized(),
        "constant": avi.Constant(),
        "amortized": avi.Amortized(inputs=window),
        "mlp:4": avi.Amortized(avi.MLP(4), window),
        "poly:2": avi.Amortized(avi.Polynomial(2), window),
        "polynomial:0": avi.Amortized(avi.Polynomial(0), window),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "{model}", "--data", "{data}"], "write FILE.py:NAME"),
        (
            ["check", "{model}:missing", "--data", "{data}"],
            "has no function 'missing' (its functions: model)",
        ),
        (["check", "{model}.nope:model", "--data", "{data}"], "no file"),
        (["check", "{model}:model", "--data", "{data}.missing"], "cannot read it as an .npz"),
        (
            ["compare", "{model}:model", "--data", "{data}", "--families", "deep"],
            "unknown family 'deep'",
        ),
        (
            ["compare", "{model}:model", "--data", "{data}", "--families", "mlp:wide"],
            "'mlp:wide' needs an integer",
        ),
        (["compare", "{model}:model", "--data", "{data}", "--window=-1,x"], "--window '-1,x'"),
    ],
)
def test_user_errors_are_one_line_with_status_2(files, capsys, argv, message):
    model_file, data_file = files
    argv = [a.format(model=model_file, data=data_file) for a in argv]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"avi {argv[0]}: error:") and message in err


def test_positional_arguments_need_no_gaps(files, tmp_path, capsys):
    model_file, _ = files
    data_file = tmp_path / "gap.npz"
    np.savez(data_file, arg0=np.zeros(5), arg2=np.zeros(5))
    assert run(["check", f"{model_file}:model", "--data", str(data_file)]) == 2
    assert "arg0, arg1, ... without gaps; found arg0, arg2" in capsys.readouterr().err


def test_check_of_grouped_radon_data_names_the_groups(tmp_path, capsys):
    """The radon model from a file, its houses from an .npz: grouped, with --groups too."""
    from avi.datasets import radon

    (tmp_path / "radon_model.py").write_text("from avi.datasets import radon_intercept\n")
    data = radon("MN")
    np.savez(tmp_path / "radon.npz", arg0=data.county, arg1=data.floor,
             arg2=data.num_counties, log_radon=data.log_radon)
    for extra in ([], ["--groups", "county"]):
        argv = ["check", f"{tmp_path / 'radon_model.py'}:radon_intercept",
                "--data", str(tmp_path / "radon.npz"), *extra]
        assert run(argv) == 0
        out = capsys.readouterr().out
        assert "verdict: simple-hierarchical" in out
        assert "plate 'county' holds J = 85 groups" in out
