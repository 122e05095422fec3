"""Where a training command's uint8 pixels come from: one function, `open_pixels`, for finetune,
gan and ae.

A folder (fixed output size, writable cache folder) gets `rows.PixelRows`: rows read on demand
from the streamed decoded cache, which fills in the background while training runs (memory stays
flat in the data set's size; a process holds the batches it reads, not the set). A built-in set
(already arrays), a native-size input (no shape before decoding) or an unwritable cache folder
gets the pixels decoded into memory; under torchrun each process then decodes a share and all
gather them.

The two differ in one way a caller must know: `PixelRows` keeps an undecodable image's position
(it reads as its nearest usable neighbour, see `rows`), while the in-memory pixels leave it out
and return the indices they kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from ..distributed import any_rank
from .preprocess import Preprocess
from .rowfile import cache_dir
from .rows import PixelRows
from .sources import ImageDataset


def usable(ds: ImageDataset, preprocess: Preprocess) -> bool:
    """Folders with a fixed output size go through the disk cache; built-in sets are arrays
    already, and native-size inputs have no shape before decoding."""
    return ds.kind != "builtin" and preprocess.output_size is not None


def writable() -> bool:
    """Can this process create files in the cache folder? (An unwritable one is not an error.)"""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def open_pixels(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    advance: Callable[[int], None],
    ctx: Any = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray | PixelRows, np.ndarray]:
    """(pixels, the indices they are of): a folder's rows from the streamed cache when the cache
    folder is writable on every process, else decoded into memory (`warn` says why). With a
    multi-process `ctx`, every process calls it together."""
    from ..errors import EnvironmentProblem
    from .rows import open_rows

    problem = None
    if usable(ds, preprocess):
        if not any_rank(not writable(), ctx):  # the processes must take the same path
            try:
                rows = open_rows(ds, indices, preprocess, ctx)
                advance(len(indices))
                return rows, np.asarray(indices)
            except EnvironmentProblem as exc:  # a full disk: every process gets it, all fall back
                problem = exc.message.rstrip(".")
        else:
            problem = f"the cache folder {cache_dir()} is not writable"
    if problem and warn is not None:
        warn(f"{problem}: decoding into memory instead")
    return in_memory(ds, indices, preprocess, advance, ctx)


def in_memory(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    advance: Callable[[int], None] | None = None,
    ctx: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NCHW pixels, the indices of the usable images) decoded into memory; with a
    multi-process `ctx` each process decodes a share and all gather them."""
    from .arrays import decode_workers, pixels_and_indices, shared_pixels

    together = ctx is not None and ctx.enabled
    workers = decode_workers(len(indices), ctx.world_size if together else 1)
    if together:
        return shared_pixels(ds, indices, preprocess, ctx, advance, workers)
    return pixels_and_indices(ds, indices, preprocess, advance, workers)
