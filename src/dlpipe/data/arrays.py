"""Materialise (part of) a data set as NumPy arrays through a Preprocess, with a progress callback."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .preprocess import Preprocess
from .sources import ImageDataset


def pixels_of(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """uint8 NCHW pixels (resized/cropped) for `indices`; compact enough to keep in memory."""
    size = preprocess.output_size
    out: np.ndarray | None = None
    for k, i in enumerate(indices):
        px = preprocess.pixels(ds.image(i))
        if out is None:
            if size is None:  # native size: must be uniform across the set
                size = px.shape[-1]
            out = np.empty((len(indices), *px.shape), dtype=np.uint8)
        if px.shape != out.shape[1:]:
            from ..errors import BadInput

            raise BadInput(
                f"Image {k} of {ds.name} has size {px.shape[1:]} but earlier ones {out.shape[2:]}.",
                hint="Images of different sizes need --image-size so they are resized to one size.",
            )
        out[k] = px
        if progress:
            progress(1)
    if out is None:
        out = np.zeros((0, preprocess.channels, size or 1, size or 1), dtype=np.uint8)
    return out


def tensors_of(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 NCHW normalized inputs, int64 labels) for `indices`."""
    px = pixels_of(ds, indices, preprocess, progress)
    return preprocess.normalize(px), ds.labels[np.asarray(indices, dtype=np.int64)]
