"""The deep generative experiment's images (avi.paper.experiments.images): IDX files, digits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from avi import DataError
from avi.paper.experiments import images


def test_idx_reader_round_trips_plain_and_gzip(
    tmp_path: Path, write_idx: Callable[[Path, np.ndarray], None]
):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3))
    for name in ("images-idx3-ubyte", "images-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(images.read_idx(tmp_path / name), array)


def test_idx_reader_rejects_truncated_and_foreign_files(
    tmp_path: Path, write_idx: Callable[[Path, np.ndarray], None]
):
    write_idx(tmp_path / "ok", np.zeros((2, 2, 2)))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="truncated"):
        images.read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="not an IDX file"):
        images.read_idx(tmp_path / "png")


def test_fashion_mnist_loader_reads_a_small_idx_directory(fashion_directory: Path):
    train = images.read_idx(fashion_directory / "train-images-idx3-ubyte.gz")
    loaded = images.load_fashion_mnist(fashion_directory, num_train=4, num_test=10)
    assert loaded.train.shape == (4, 784) and loaded.test.shape == (3, 784)
    np.testing.assert_allclose(loaded.train[1], train[1].reshape(-1) / 255.0, rtol=1e-6)


def test_digits_split_is_fixed_disjoint_and_scaled():
    first, second = images.load_digits(), images.load_digits()
    assert first.train.shape == (1_000, 64) and first.test.shape == (797, 64)
    np.testing.assert_array_equal(first.train, second.train)
    assert 0.0 <= first.train.min() and first.train.max() == 1.0
    train_rows = {row.tobytes() for row in first.train}
    assert sum(row.tobytes() in train_rows for row in first.test) < 20  # digits has few duplicates
