"""fit.save / avi.load: a loaded fit infers new data exactly as the original did, in a fresh
process, without the training data; mismatched models and skeletons are refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import saving_models
from numpyro.distributions import constraints

import avi
from avi.cli.main import main
from avi.model.describe import describe_support, restore_support
from avi.saving import FORMAT_VERSION

TESTS = Path(__file__).parent
X_NEW, Y_NEW = saving_models.data(seed=1, num_data=7)

FAMILIES = {
    "mlp": lambda: avi.Amortized(avi.MLP(width=4), factor=avi.Flow(), given_globals=True),
    "custom": lambda: avi.Amortized(saving_models.Affine(2, jax.random.PRNGKey(1))),
    "window": lambda: avi.Amortized(
        avi.MLP(width=4), inputs=avi.Window(offsets=(-1, 0)), factor=avi.FullRank()
    ),
}
"""A built-in encoder with a flow factor given the globals, a user's equinox encoder (of the
features x and y), and a Window with a full-rank factor."""


def _fit(name: str) -> avi.Fit:
    x, y = saving_models.data()
    return avi.fit(saving_models.model, x, y, family=FAMILIES[name](), num_steps=3, progress=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[avi.Fit, Path]]:
    root = tmp_path_factory.mktemp("saved")
    fits = {}
    for name in FAMILIES:
        fit = _fit(name)
        fits[name] = (fit, fit.save(root / name))
    return fits


def _answers(fit: avi.Fit) -> dict[str, np.ndarray]:
    """What a user reads of new data: factor parameters and posterior draws of every site."""
    factors = fit.local_factors(X_NEW, y=Y_NEW)
    draws = fit.sample(5, X_NEW, y=Y_NEW, seed=3)
    return {**{f"factor {i}": np.asarray(f) for i, f in enumerate(factors)}, **draws}


FRESH_PROCESS = """
import sys
import jax
import numpy as np
sys.path.insert(0, {tests!r})
import avi, saving_models, test_saving
skeleton = saving_models.Affine(2, jax.random.PRNGKey(7))
for name, path in {paths!r}.items():
    encoder = skeleton if name == "custom" else None
    fit = avi.load(path, saving_models.model, encoder=encoder)
    np.savez(path + "/answers.npz", **test_saving._answers(fit))
"""


def test_a_loaded_fit_infers_new_data_exactly_as_the_original_in_a_fresh_process(saved):
    paths = {name: str(path) for name, (_, path) in saved.items()}
    script = FRESH_PROCESS.format(tests=str(TESTS), paths=paths)
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=300)
    for name, (fit, path) in saved.items():
        expected = _answers(fit)
        with np.load(path / "answers.npz") as loaded:
            assert sorted(loaded.files) == sorted(expected)
            for key, value in expected.items():
                np.testing.assert_array_equal(loaded[key], value, err_msg=f"{name}: {key}")


def test_a_window_fit_gives_nan_to_new_data_lacking_a_neighbour(saved):
    loc, _ = saved["window"][0].local_factors(X_NEW, Y_NEW)
    assert np.isnan(loc[0]).all() and np.isfinite(loc[1:]).all()


def test_the_description_is_plain_json_with_the_models_sites(saved):
    document = json.loads((saved["mlp"][1] / "fit.json").read_text())
    assert document["format_version"] == FORMAT_VERSION
    assert {"avi", "jax", "numpyro", "equinox"} <= set(document["versions"])
    sites = {
        s["name"]: s["support"] for s in document["model"]["globals"] + document["model"]["locals"]
    }
    assert sites == {"noise": {"name": "positive"}, "z": {"name": "real"}}
    assert document["model"]["plate"] == "data" and document["model"]["observed"] == ["y"]
    encoder = document["family"]["fields"]["encoder"]
    assert encoder == {
        "class": "avi.families.encoders:MLP",
        "fields": {"width": 4, "depth": 2, "activation": "relu"},
    }
    assert document["family"]["fields"]["factor"]["class"] == "avi.families.flow:Flow"
    assert set(document["q_globals"]["noise"]) == {"loc", "scale"}


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        (saving_models.positive_local, "site 'z' has support"),
        (saving_models.renamed_global, "global latent site 'noise' is missing"),
    ],
)
def test_a_model_with_other_sites_is_refused_with_the_difference(saved, other, reason):
    fit = avi.load(saved["mlp"][1], other)
    with pytest.raises(avi.FamilyError, match=reason):
        fit.posterior(X_NEW, Y_NEW)


def test_a_users_encoder_needs_a_skeleton_of_its_class_and_shapes(saved):
    path = saved["custom"][1]
    with pytest.raises(avi.FamilyError, match=r"encoder=Affine\(\.\.\., key"):
        avi.load(path, saving_models.model)
    with pytest.raises(
        avi.FamilyError, match=r"encoder failed on a feature vector of shape \(2,\)"
    ):
        avi.load(path, saving_models.model, encoder=saving_models.Affine(3, jax.random.PRNGKey(0)))
    with pytest.raises(avi.FamilyError, match="rebuilt from the saved description"):
        avi.load(
            saved["mlp"][1],
            saving_models.model,
            encoder=saving_models.Affine(2, jax.random.PRNGKey(0)),
        )


def test_avi_infer_takes_a_users_encoder_from_a_function(saved, tmp_path, capsys):
    data = tmp_path / "new.npz"
    np.savez(data, arg0=X_NEW, y=Y_NEW)
    models = TESTS / "saving_models.py"
    argv = ["infer", str(saved["custom"][1]), "--model", f"{models}:model", "--data", str(data)]
    out = ["--out", str(tmp_path / "post.csv")]
    assert main([*argv, *out]) == 2
    assert "add --encoder FILE.py:NAME" in capsys.readouterr().err
    assert main([*argv, *out, "--encoder", f"{models}:affine_skeleton"]) == 0
    assert "posterior of 7 data (z)" in capsys.readouterr().out


def test_a_loaded_fit_keeps_its_record_but_not_the_training_data(saved):
    fit, path = saved["mlp"]
    loaded = avi.load(path, saving_models.model)
    assert loaded.num_steps == fit.num_steps == 3
    np.testing.assert_array_equal(loaded.history.elbo, fit.history.elbo)
    with pytest.raises(avi.FamilyError, match="loaded .* without its training data"):
        loaded.elbo()
    with pytest.raises(avi.FamilyError, match="loaded .* without its training data"):
        loaded.posterior()
    with pytest.raises(avi.FamilyError, match="read fit.certificate .* before fit.save"):
        loaded.certificate  # noqa: B018


def test_saving_never_replaces_a_fit_silently(saved, tmp_path):
    fit, _ = saved["mlp"]
    fit.save(tmp_path / "fit")
    with pytest.raises(avi.AviError, match="already holds a saved fit; pass overwrite=True"):
        fit.save(tmp_path / "fit")
    fit.save(tmp_path / "fit", overwrite=True)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(avi.AviError, match="is a file"):
        fit.save(tmp_path / "file")


def test_arrays_that_do_not_fit_the_description_are_named(saved, tmp_path):
    source = saved["mlp"][1]
    document = json.loads((source / "fit.json").read_text())
    document["arrays"]["leaves"][0]["shape"] = [2]
    (tmp_path / "fit.json").write_text(json.dumps(document))
    (tmp_path / "arrays.eqx").write_bytes((source / "arrays.eqx").read_bytes())
    with pytest.raises(avi.AviError, match=r"global_loc \(1,\) where the file has .* \(2,\)"):
        avi.load(tmp_path, saving_models.model)


def test_newer_formats_and_other_folders_are_refused(saved, tmp_path):
    with pytest.raises(avi.AviError, match="not a saved avi fit"):
        avi.load(tmp_path, saving_models.model)
    document = json.loads((saved["mlp"][1] / "fit.json").read_text())
    document["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "fit.json").write_text(json.dumps(document))
    with pytest.raises(avi.AviError, match="upgrade avi"):
        avi.load(tmp_path, saving_models.model)


@pytest.mark.parametrize(
    "support",
    [
        constraints.real,
        constraints.positive,
        constraints.simplex,
        constraints.interval(-1.0, 2.5),
        constraints.greater_than(3.0),
        constraints.independent(constraints.real, 1),
        constraints.independent(constraints.interval(0.0, 1.0), 2),
    ],
)
def test_supports_survive_json(support):
    description = json.loads(json.dumps(describe_support(support)))
    restored = restore_support(description)
    assert describe_support(restored) == description
    assert type(restored) is type(support)
    if "name" in description:
        assert restored is support
