"""The images of the deep generative experiment: scikit-learn's digits or FashionMNIST's IDX files.

FashionMNIST cannot be downloaded here, so the default is scikit-learn's 8x8 digits, which ship
with the package (1,797 images, pixels / 16 in [0, 1]), split by a fixed permutation (seed 0):
the first 1,000 images train, the other 797 test. ``data=DIR`` reads FashionMNIST's standard IDX
files (``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``, optionally ``.gz``) from DIR.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from avi.errors import DataError


class Images(NamedTuple):
    """Training and test images, flattened, pixels in [0, 1]."""

    name: str
    train: np.ndarray
    test: np.ndarray


def load_digits(num_train: int = 1_000, seed: int = 0) -> Images:
    """scikit-learn's 8x8 digits, pixels / 16, split by a fixed permutation."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow to import; only needed here

    pixels = sklearn_digits().data.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(pixels.shape[0])
    return Images("digits", pixels[order[:num_train]], pixels[order[num_train:]])


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed when its name ends in ``.gz``.

    Layout: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions,
    one big-endian uint32 per dimension, then the values in row-major order.

    Raises:
        DataError: the file is not IDX or its size does not match its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (its first bytes are {raw[:4]!r}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: the file ends inside its IDX header; it is truncated.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) - header != math.prod(shape) * dtype.itemsize:
        raise DataError(
            f"{path}: the header announces shape {shape} of {dtype} but the file holds "
            f"{len(raw) - header} bytes of values; the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def find_idx(directory: Path, stem: str) -> Path:
    """The IDX file ``stem`` or ``stem.gz`` in ``directory``.

    Raises:
        DataError: neither exists; the message names the ``data`` directory and both names.
    """
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"data='{directory}' (--data): found neither {stem} nor {stem}.gz there. Give the "
        "directory holding FashionMNIST's IDX files (train-images-idx3-ubyte and "
        "t10k-images-idx3-ubyte, optionally gzip-compressed)."
    )


def load_fashion_mnist(directory: str | Path, num_train: int, num_test: int) -> Images:
    """FashionMNIST's first ``num_train`` training and ``num_test`` test images, pixels / 255.

    Raises:
        DataError: the directory or an IDX file is missing or malformed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"data='{directory}' (--data) is not a directory; give the directory holding "
            "FashionMNIST's IDX files."
        )
    train, test = (
        read_idx(find_idx(directory, stem))
        for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    )
    for name, images in (("train", train), ("test", test)):
        if images.ndim != 3:
            raise DataError(
                f"{name} images in '{directory}' have shape {images.shape}, not (n, rows, cols)."
            )
    return Images("fashion-mnist", _scaled(train, num_train), _scaled(test, num_test))


def _scaled(images: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` images, flattened, bytes scaled to [0, 1]."""
    first = images[:count]
    return first.reshape(len(first), -1).astype(np.float32) / 255.0
