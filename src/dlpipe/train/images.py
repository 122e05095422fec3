"""Image data shared by the GAN and autoencoder loops (uint8 NCHW: a folder's read on demand from
the decoded cache, `data.rows.PixelRows`, filling in the background while training runs; a
built-in set's in memory), and their data-parallel helpers: global batches, this process's
rows, agreed stops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import Preprocess, make_split, open_source
from ..data.pixels import open_pixels
from ..data.rows import PixelRows
from ..data.splits import held_out_missing, subsample
from ..distributed import any_rank, current
from ..models.dcgan import stages

if TYPE_CHECKING:
    import torch

    from ..distributed import DistContext


@dataclass
class ImageData:
    """Training and held-out pixels (uint8 NCHW) plus what a checkpoint must say about them."""

    train: np.ndarray | PixelRows  # a folder's rows are read on demand (PixelRows)
    heldout: np.ndarray | PixelRows  # split.test: what final metrics are measured on
    val: np.ndarray | PixelRows  # split.val (empty when val_fraction is 0)
    preprocess: Preprocess
    image_size: int
    channels: int
    data_meta: dict[str, Any]
    summary: str
    skipped: list[tuple[str, str]]  # unusable files of the source: (path, reason)
    heldout_labels: np.ndarray | None = None  # class of each held-out image (-1: unlabeled)


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
    """Open a source, split it (held-out = split.test), and get the parts' uint8 pixels: a folder's
    as `PixelRows` on the decoded cache (filled in the background, training rows first, while
    training reads: nothing waits for the whole set; memory stays flat in the set's size), a
    built-in set's in memory. Under torchrun the processes fill the training part's cache
    together (each decodes a share; nobody gathers the set) and each reads only the rows it
    uses; the held-out and validation images, which rank 0 alone evaluates on, are read there
    only (empty elsewhere). Images that turn out undecodable are listed (see `data.rows`)."""
    ds = open_source(source, data_root=data_root, strict=strict)
    h, w = ds.image_size()
    size = _pick_size(image_size, min(h, w))
    c = ds.channels
    pre = Preprocess(resize=size, crop=size, mean=[mean] * c, std=[std] * c, channels=c)
    split = make_split(ds.labels, val_fraction, test_fraction, seed, ds.official_test)
    ctx = current()
    if not len(split.test) and ctx.is_main:
        why = held_out_missing(ds.labels, {"test": test_fraction}, need=2 + (val_fraction > 0))
        out.warn(
            f"no held-out images: {why}. The final scores on held-out images (PSNR/SSIM of ae "
            "train, fd/kid of gan train) will be missing. Add images to the folder."
        )
    train_idx = subsample(ds.labels, split.train, limit, seed)
    total = len(train_idx) + len(split.test) + len(split.val)
    with out.progress("decoding images", total) as advance:
        train, train_idx = open_pixels(ds, train_idx, pre, advance, ctx, out.warn)
        nothing = np.zeros((0, c, size, size), dtype=np.uint8), np.zeros(0, dtype=np.int64)
        main = ctx.is_main
        heldout, test_idx = (
            open_pixels(ds, split.test, pre, advance, None, out.warn) if main else nothing
        )
        val = open_pixels(ds, split.val, pre, advance, None, out.warn)[0] if main else nothing[0]
    meta = {
        "source": source,
        "data_root": data_root,
        "fingerprint": ds.fingerprint,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "limit": limit,
        "train_images": int(len(train_idx)),
        "heldout_images": int(len(split.test)),
        "val_images": int(len(split.val)),
    }
    labels = ds.labels[test_idx]  # of the images decoded: one that vanished has no row
    return ImageData(train, heldout, val, pre, size, c, meta, ds.summary(), ds.skipped, labels)


def open_image_run(cfg: Any, mean: float, std: float, out: Any) -> tuple[Any, Any, Any, ImageData]:
    """The prologue of the GAN and AE recipes: seeds, process group and device, precision
    settings, and the image data (normalised with `mean`/`std`); (ctx, device, accel, data)."""
    from ..distributed import setup
    from ..runtime import seed_everything
    from .accel import Accel

    seed_everything(cfg.seed, cfg.deterministic)
    ctx, device = setup(cfg.device)
    accel = Accel.create(cfg.amp, cfg.compile, device)
    data = load_image_data(
        cfg.data, cfg.data_root, cfg.strict, cfg.image_size, cfg.val_fraction,
        cfg.test_fraction, cfg.seed, cfg.limit, mean, std, out,
    )  # fmt: skip
    return ctx, device, accel, data


def begin_run(run: Any, data: ImageData, out: Any, cfg: Any, state: Any, resume: bool,
              shown: str, logged: str, ctx: Any) -> None:  # fmt: skip
    """The start of a gan/ae run, written by rank 0 alone: skipped files, the data line, config
    (fresh) or metrics cut back to the checkpoint (resumed), and the log line."""
    from dataclasses import asdict

    from ..distributed import on_main

    def write() -> None:
        for part in (data.train, data.heldout, data.val):  # images found unusable later
            if isinstance(part, PixelRows):
                part.report = lambda: run.report_skipped(data.skipped, out)
        run.report_skipped(data.skipped, out)
        out.print(f"{data.summary}; {shown}")
        if resume:
            run.truncate_metrics(state.epoch + 1)
            out.print(f"resumed {run.path} after epoch {state.epoch} (step {state.step})")
        else:
            run.write_config(asdict(cfg))
        processes = f"; {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
        run.log(f"{logged}; {state.acc.describe()}{processes}")

    on_main(write, ctx)


def batches(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of each GLOBAL batch; a trailing batch of one image is dropped (BatchNorm
    needs 2), and one with fewer rows than processes (a process would get none)."""
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return [(a, b) for a, b in spans if b - a >= max(2, world_size)]


def train_pixels(train: np.ndarray | PixelRows, device: Any) -> Any:
    """What a loop indexes with `global_batch`: in-memory pixels as one tensor on `device`, a
    folder's rows as they are (each batch goes to `device` when read)."""
    if isinstance(train, PixelRows):
        return train.on(device)
    import torch

    return torch.from_numpy(train).to(device)


def global_batch(pixels: Any, order: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """uint8 rows of the global batch `order` (positions), on the pixels' device. From a folder
    only this process's rows (`ctx.part`) are read; the others stay zero. The step keeps only its
    rows (`rows_of`) but still sees the global batch's size and draws the global batch's noise,
    so every process computes what one process computes. In-memory pixels are gathered whole."""
    if isinstance(pixels, PixelRows):
        import torch

        part = ctx.part if ctx.enabled else None
        return torch.from_numpy(pixels.batch(order.cpu().numpy(), part)).to(pixels.device)
    return pixels[order.to(pixels.device)]


def rows_of(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This process's rows of a global batch (the batch itself in a single process)."""
    return batch[ctx.part].contiguous() if ctx.enabled else batch


def weighted(loss: torch.Tensor, share: float) -> torch.Tensor:
    """A local mean loss weighted by `ctx.share(n)`: after DDP's average over processes, the
    gradient is the global batch's mean gradient. Untouched when the weight is 1."""
    return loss if share == 1.0 else loss * share


def agree_stop(requested: bool, device: Any, ctx: DistContext) -> bool:
    """Ctrl-C on any process stops every process (one all-reduce on `device`, NCCL-safe)."""
    return any_rank(requested, ctx, device)


def share_rng(ctx: DistContext, device: Any) -> None:
    """Give every process rank 0's RNG state: after work done on rank 0 alone (fd/kid feature
    models draw random initial weights) and after a resume, so the processes keep drawing the
    same noise and order. CUDA: rank 0's generator of ITS device goes to each process's own
    device (every process draws on cuda:LOCAL_RANK)."""
    if not ctx.enabled:
        return
    import random

    import torch

    from ..distributed import from_main

    cuda = getattr(device, "type", str(device)).startswith("cuda")
    mine = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if cuda else None,
    }
    state = from_main(mine, ctx)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if cuda:
        torch.cuda.set_rng_state(state["cuda"], device)
