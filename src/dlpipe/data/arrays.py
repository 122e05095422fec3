"""Materialise (part of) a data set as NumPy arrays through a Preprocess, with a progress callback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .preprocess import Preprocess
from .sources import ImageDataset


def decode_workers(n: int, processes: int = 1) -> int:
    """Worker processes worth starting to decode `n` images: none for small sets or on machines
    with few cores per training process (workers would only compete with the main process)."""
    import multiprocessing

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_process = (cores or 1) // max(processes, 1)
    if n < 2048 or per_process < 4 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(8, per_process - 1)


def decoded_batches(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    batch_size: int = 256,
    workers: int = 0,
) -> Iterator[list[np.ndarray]]:
    """uint8 CHW pixels of `indices`, in order, a list per batch; with `workers` > 0 decoded by a
    torch DataLoader's worker processes (forked: the data set need not pickle)."""
    if workers <= 0:
        for start in range(0, len(indices), batch_size):
            yield [preprocess.pixels(ds.image(i)) for i in indices[start : start + batch_size]]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _Decoded(ds, np.asarray(indices), preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        multiprocessing_context="fork",
    )
    yield from loader


class _Decoded:
    """Map-style view for DataLoader workers: position -> uint8 pixels."""

    def __init__(self, ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess) -> None:
        self.ds, self.indices, self.preprocess = ds, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.preprocess.pixels(self.ds.image(self.indices[k]))


def pixels_of(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> np.ndarray:
    """uint8 NCHW pixels (resized/cropped) for `indices`; compact enough to keep in memory.
    `workers` > 0 decodes in DataLoader worker processes (see `decode_workers`)."""
    size = preprocess.output_size
    out: np.ndarray | None = None
    k = 0
    for chunk in decoded_batches(ds, indices, preprocess, workers=workers):
        for px in chunk:
            if out is None:
                if size is None:  # native size: must be uniform across the set
                    size = px.shape[-1]
                out = np.empty((len(indices), *px.shape), dtype=np.uint8)
            if px.shape != out.shape[1:]:
                from ..errors import BadInput

                raise BadInput(
                    f"Image {k} of {ds.name} has size {px.shape[1:]} but earlier ones "
                    f"{out.shape[2:]}.",
                    hint="Images of different sizes need --image-size so they are resized to one "
                    "size.",
                )
            out[k] = px
            k += 1
        if progress:
            progress(len(chunk))
    if out is None:
        out = np.zeros((0, preprocess.channels, size or 1, size or 1), dtype=np.uint8)
    return out


def shared_pixels(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    ctx: Any,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> np.ndarray:
    """`pixels_of` called by every process of a torchrun job together: each decodes rows
    rank::N, all gather them in order (the decoding is not repeated on every process). A bad
    image found by any process is raised on every one (rank 0 reports it). One process: plain."""
    if not ctx.enabled:
        return pixels_of(ds, indices, preprocess, progress, workers)
    import torch

    from ..distributed import gather_rows, on_every_rank, shard_positions

    mine = shard_positions(len(indices), ctx)
    scaled = (lambda k: progress(k * ctx.world_size)) if progress else None
    local = on_every_rank(lambda: pixels_of(ds, indices[mine], preprocess, scaled, workers), ctx)
    return gather_rows(torch.from_numpy(local), len(indices), ctx).numpy()


def tensors_of(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 NCHW normalized inputs, int64 labels) for `indices`."""
    px = pixels_of(ds, indices, preprocess, progress)
    return preprocess.normalize(px), ds.labels[np.asarray(indices, dtype=np.int64)]
