"""Data and console plumbing shared by the GAN and autoencoder loops (in memory, uint8 NCHW)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import Preprocess, make_split, open_source
from ..data.arrays import pixels_of
from ..data.splits import subsample
from ..models.dcgan import stages


class Quiet:
    """A silent stand-in for cli.common.Output when a loop is called as a library function."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Ignore human output."""

    def warn(self, message: str) -> None:
        """Warnings still reach the log through the caller; nothing to print here."""

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A progress callback that does nothing."""
        yield lambda n=1, **fields: None


@dataclass
class ImageData:
    """Training and held-out pixels (uint8 NCHW) plus what a checkpoint must say about them."""

    train: np.ndarray
    heldout: np.ndarray  # split.test: what final metrics are measured on
    val: np.ndarray  # split.val (empty when val_fraction is 0)
    preprocess: Preprocess
    image_size: int
    channels: int
    data_meta: dict[str, Any]
    summary: str
    skipped: list[tuple[str, str]]  # unusable files of the source: (path, reason)


def _pick_size(requested: int | None, native: int) -> int:
    """The requested side, or the data's native side when it suits the architecture (else 64)."""
    if requested:
        stages(requested)  # fail early with a clear message
        return int(requested)
    try:
        stages(native)
        return native
    except Exception:
        return 64


def load_image_data(
    source: str,
    data_root: str | None,
    strict: bool,
    image_size: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None,
    mean: float,
    std: float,
    out: Any,
) -> ImageData:
    """Open a source, split it (held-out = split.test), and decode both parts to uint8 arrays."""
    ds = open_source(source, data_root=data_root, strict=strict)
    h, w = ds.image_size()
    size = _pick_size(image_size, min(h, w))
    c = ds.channels
    pre = Preprocess(resize=size, crop=size, mean=[mean] * c, std=[std] * c, channels=c)
    split = make_split(ds.labels, val_fraction, test_fraction, seed, ds.official_test)
    train_idx = subsample(ds.labels, split.train, limit, seed)
    total = len(train_idx) + len(split.test) + len(split.val)
    with out.progress("decoding images", total) as advance:
        train = pixels_of(ds, train_idx, pre, advance)
        heldout = pixels_of(ds, split.test, pre, advance)
        val = pixels_of(ds, split.val, pre, advance)
    meta = {
        "source": source,
        "data_root": data_root,
        "fingerprint": ds.fingerprint,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "limit": limit,
        "train_images": int(len(train)),
        "heldout_images": int(len(heldout)),
        "val_images": int(len(val)),
    }
    return ImageData(train, heldout, val, pre, size, c, meta, ds.summary(), ds.skipped)


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch; a trailing batch of one image is dropped (BatchNorm needs 2)."""
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return [(a, b) for a, b in spans if b - a >= 2]
