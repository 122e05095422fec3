"""One fine-tune run's state: data, model, optimizer, stage; set up fresh or from a checkpoint.

Under torchrun every rank builds the same Session (same seed, data, split and weights); only rank 0
writes (log, skipped.txt), and the module a step calls is `training_view(...)` of the plain one
(DDP, synced BatchNorm), re-made when the stage changes what trains.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...checkpoint import load_checkpoint
from ...config import FinetuneConfig
from ...data import Preprocess, make_split, open_source
from ...data.pixels import open_pixels
from ...data.rows import PixelRows
from ...data.sources import ImageDataset
from ...data.splits import held_out_missing, subsample
from ...distributed import DistContext, setup
from ...errors import BadInput
from ...models.backbones import (
    FAMILIES,
    arch_meta,
    build_classifier,
    in_channels,
    parse_backbone,
    preprocess_for,
    resolve_weights,
)
from ...runs import RunDir
from ...runtime import seed_everything, set_rng_state
from ..accel import Accel
from ..optim import check_combination, make_optimizer, trainable
from ..parallel import training_view
from . import features as fcache
from .loop import Source, global_dropout, set_frozen


@dataclass
class Data:
    """The opened source and index arrays of each split."""

    ds: ImageDataset
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @classmethod
    def open(cls, cfg: FinetuneConfig) -> Data:
        ds = open_source(cfg.data, cfg.data_root, cfg.strict)
        ds.require_classes(2)
        split = make_split(ds.labels, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                           ds.official_test)  # fmt: skip
        pick = lambda idx, n: subsample(ds.labels, idx, n, cfg.seed)  # noqa: E731
        return cls(ds, pick(split.train, cfg.limit), pick(split.val, cfg.eval_limit),
                   pick(split.test, cfg.eval_limit))  # fmt: skip

    def warn_if_nothing_held_out(self, cfg: FinetuneConfig, out: Any) -> None:
        """Say up front, with the reason, that the run will have no held-out accuracy and that
        its per-epoch "val" figures are measured on the training images."""
        if len(self.val) or len(self.test):
            return
        out.warn(
            f"no held-out images: {self.why_nothing_held_out(cfg)}. This run will report no held-out accuracy, and its "
            "per-epoch 'val' figures are measured on the training images, so they say nothing "
            "about new images. Add images (a few per class at least, tens for a score to trust), "
            "or score the model on another labeled folder afterwards: "
            "`dlpipe eval RUN --data OTHER_FOLDER`."
        )

    def why_nothing_held_out(self, cfg: FinetuneConfig) -> str:
        """Why neither validation nor test got an image (2 images of a class spare one)."""
        fractions = {"val": cfg.val_fraction, "test": cfg.test_fraction}
        return held_out_missing(self.ds.labels, fractions, need=2)


@dataclass
class Session:
    """Everything a run needs between epochs."""

    cfg: FinetuneConfig
    run: RunDir
    out: Any
    data: Data
    model: nn.Module
    info: dict[str, Any]
    preprocess: Preprocess
    weights: dict[str, Any]
    device: torch.device
    ctx: DistContext = field(default_factory=DistContext)
    accel: Accel | None = None
    optimizer: torch.optim.Optimizer | None = None
    epoch: int = 0  # epochs completed
    stage: str = "frozen"
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"acc": -1.0, "loss": math.inf,
                                                           "epoch": 0, "bad": 0})  # fmt: skip
    stopped: str | None = None
    cache_how: str = "-"
    head_fit: dict[str, Any] | None = None  # what --head-fit auto chose (headfit.py)
    _pixels: dict[str, Source] = field(default_factory=dict)
    _feats: dict[str, Source] = field(default_factory=dict)
    _body_hash: str | None = None
    _view: tuple[Any, nn.Module] | None = None  # (what it was made for, training view)
    started: float = field(default_factory=time.perf_counter)
    _skips_reported: int = 0

    # ---- setup ------------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: FinetuneConfig, run: RunDir, out: Any, resume: bool) -> Session:
        """Validate options, open data, build the model (fresh or from last.safetensors)."""
        staged = cfg.frozen and cfg.unfreeze_after is not None
        check_combination(cfg.optimizer, cfg.scheduler, cfg.warmup_epochs, staged)
        if cfg.unfreeze_after is not None and not cfg.frozen:
            raise BadInput("--unfreeze-after needs a frozen start.", hint="Drop --no-freeze.")
        parse_backbone(cfg.backbone)  # unknown names fail before data is read
        ctx, device = setup(cfg.device)
        accel = _accel(cfg, device)
        seed_everything(cfg.seed, cfg.deterministic)
        data = Data.open(cfg)
        if ctx.is_main:
            run.report_skipped(data.ds.skipped, out)
            data.warn_if_nothing_held_out(cfg, out)
            if cfg.freeze and not cfg.pretrained and cfg.unfreeze_after is None:
                out.warn(
                    "--freeze with --weights none freezes a randomly initialised backbone: only "
                    "the head learns. Drop --freeze to train the whole network from scratch."
                )
        ckpt = load_checkpoint(run.checkpoint("last")) if resume else None
        if resume and not run.checkpoint("last").exists():
            raise BadInput(f"Nothing to resume in {run.path}.", hint="Start it without --resume.")
        in_chans = in_channels(cfg.backbone, data.ds.channels)
        weights = resolve_weights(cfg.backbone, cfg.weights) if ckpt is None else None
        model, info = build_classifier(
            cfg.backbone, len(data.ds.class_names), cfg.head, cfg.hidden, cfg.dropout, in_chans,
            cfg.image_size, weights,
        )  # fmt: skip
        if ckpt is not None:
            _check_resume(ckpt.meta, model, info, data.ds, cfg)
            pre = Preprocess.from_dict(ckpt.meta["preprocess"])
            wdesc = ckpt.meta.get("weights", {})
        else:
            # a native CNN takes any side: record the data's, so the run says what it exports with
            by_data = FAMILIES[parse_backbone(cfg.backbone).family].sized_by_data
            side = cfg.image_size or (data.ds.image_size()[0] if by_data else None)
            pre = preprocess_for(model, cfg.backbone, weights, in_chans, side)
            wdesc = weights.describe() if weights else {"spec": cfg.weights, "source": "none"}
        info["in_chans"] = in_chans
        s = cls(cfg, run, out, data, model.to(device), info, pre, wdesc, device, ctx, accel)
        s._skips_reported = len(data.ds.skipped)  # reported above, when the folder was read
        s.stage = "frozen" if s.frozen_at(0) else "unfrozen"
        s._check_input_size()
        s._setup_optimizer()
        if ckpt is not None:
            s._restore(ckpt)
        return s

    def _check_input_size(self) -> None:
        size = self.preprocess.output_size or self.data.ds.image_size()[0]
        x = torch.zeros(2, self.info["in_chans"], size, size, device=self.device)
        self.model.eval()
        try:
            with torch.inference_mode():
                self.model(x)
        except RuntimeError as exc:
            raise BadInput(
                f"{self.cfg.backbone} cannot take {size}x{size} inputs "
                f"({str(exc).splitlines()[0][:160]}).",
                hint="Use a larger --image-size (224 always works for ImageNet models).",
            ) from None

    def frozen_at(self, epoch: int) -> bool:
        """Is the backbone frozen during `epoch` (0-based)?"""
        c = self.cfg
        return c.frozen and (c.unfreeze_after is None or epoch < c.unfreeze_after)

    def _setup_optimizer(self) -> None:
        set_frozen(self.model, self.frozen_at(self.epoch), self.cfg.train_bn)
        head, body = trainable(self.model.head), trainable(self.model.body)
        c = self.cfg
        groups = [{"params": head, "lr": c.lr, "name": "head"},
                  {"params": body, "lr": c.lr * c.body_lr_mult, "name": "backbone"}]  # fmt: skip
        if c.optimizer == "lbfgs":
            groups = [{"params": head + body, "lr": c.lr, "name": "all"}]
        self.optimizer = make_optimizer(c.optimizer, groups, c.weight_decay)
        self.base_lrs = [g["lr"] for g in groups]

    @property
    def keeps_bn(self) -> bool:
        """After an unfreeze, BatchNorm keeps its pretrained statistics (unless --train-bn):
        batch statistics of small, un-ImageNet-like batches cost accuracy (0.86 vs 0.95 on
        unseen grayscale digits)."""
        return self.cfg.staged and not self.cfg.train_bn

    def unfreeze(self) -> None:
        """Stage 2: the backbone trains too, in the group that existed from the start."""
        set_frozen(self.model, False)
        assert self.optimizer is not None
        self.optimizer.param_groups[1]["params"] = trainable(self.model.body)
        self.stage = "unfrozen"
        bn = "BatchNorm keeps its statistics" if self.keeps_bn else "BatchNorm trains"
        self.log(f"epoch {self.epoch + 1}: backbone unfrozen (lr x{self.cfg.body_lr_mult}, "
                 f"warming up from 0; {bn})")  # fmt: skip

    def log(self, message: str) -> None:
        """A line in the run's log (rank 0 writes it)."""
        if self.ctx.is_main:
            self.run.log(message)

    def training_module(self, module: nn.Module) -> nn.Module:
        """What a training step calls for `module` (the head on cached features, else the whole
        model): DDP with synced BatchNorm and global-batch dropout under torchrun, the module
        itself in one process on the CPU. Re-made when the stage changes, since DDP fixes its
        parameter set when it is built (unfreezing adds the backbone's)."""
        key = (id(module), self.stage)
        if self._view is None or self._view[0] != key:
            if self._view is not None:  # release the old DDP's gradient hooks before a new one
                self._view = None
                gc.collect()
            if self.ctx.enabled:
                global_dropout(module)
            view = training_view(module, self.ctx, self.device, self.accel, self.cfg.sync_bn)
            self._view = (key, view)
        return self._view[1]

    def _restore(self, ckpt: Any) -> None:
        self.model.load_state_dict(ckpt.weights["model"])
        st = ckpt.state
        self.epoch, self.global_step = int(st["epoch"]), int(st["global_step"])
        self.best = dict(st["best"])
        self.head_fit = st.get("head_fit")
        if st["stage"] == "unfrozen":
            self.unfreeze()
        assert self.optimizer is not None
        if st.get("optimizer_name", self.cfg.optimizer) != self.cfg.optimizer:
            raise BadInput(
                f"--resume: the run used --optimizer {st['optimizer_name']}, not "
                f"{self.cfg.optimizer}; its optimizer state cannot carry over.",
                hint="Resume with the original optimizer, or start a new run.",
            )
        self.optimizer.load_state_dict(st["optimizer"])
        assert self.accel is not None
        self.accel.load_state(st.get("scalers"))
        set_rng_state(st["rng"])
        if self.ctx.is_main:
            self.run.truncate_metrics(self.epoch + 1)  # rows are numbered from 1
        self.log(f"resumed at epoch {self.epoch} (stage {self.stage}, {self.ctx.world_size} "
                 f"process{'es' if self.ctx.enabled else ''})")  # fmt: skip

    # ---- inputs ------------------------------------------------------------------------------
    def body_hash(self) -> str:
        """Hash of the exact (frozen) backbone weights: the feature cache's key."""
        if self._body_hash is None:
            self._body_hash = fcache.module_hash(self.model.body)
        return self._body_hash

    def feature_source(self, split: str, collective: bool = False) -> Source:
        """Cached backbone features of a split (computed once, then from memory/disk). With
        `collective` (the training split, called on every rank) each rank computes its shard of
        a missing cache and all of them get the whole; otherwise this process works alone."""
        if split not in self._feats:
            idx = getattr(self.data, split)
            args = (self.model.body, self.body_hash(), self.data.ds, idx, self.preprocess, split,
                    self.device)  # fmt: skip
            with self.out.progress(f"backbone features ({split}, once)", len(idx)) as advance:
                feats, labels, how = fcache.cached_features(
                    *args, advance, self.cfg.feature_batch_size, accel=self.accel,
                    ctx=self.ctx if collective else None,
                )  # fmt: skip
            self._report_late_skips()
            if split == "train":
                self.cache_how = how
                self.log(f"train features: {how} ({len(idx)} rows)")
            self._feats[split] = Source(labels, features=feats.to(self.device))
        return self._feats[split]

    def pixel_source(self, split: str, collective: bool = False) -> Source:
        """uint8 pixels of a split, normalized per batch by Preprocess: a folder's rows read on
        demand from the streamed cache (training starts while it fills), a built-in set's in
        memory. With `collective` (the training split, called on every rank) the processes fill
        the cache together, each decoding a share, and each reads only its rows."""
        if split not in self._pixels:
            idx = getattr(self.data, split)
            ctx = self.ctx if collective else None
            with self.out.progress(f"decode {split}", len(idx)) as advance:
                px, kept = open_pixels(self.data.ds, idx, self.preprocess, advance, ctx,
                                       self.out.warn)  # fmt: skip
            if isinstance(px, PixelRows):  # images found undecodable while training: listed
                px.report = self._report_late_skips
            labels = torch.from_numpy(self.data.ds.labels[kept].copy())
            self._report_late_skips()
            aug = self.cfg.augment and split == "train"
            self._pixels[split] = Source(labels, pixels=px, preprocess=self.preprocess,
                                         augment=aug, hflip=self.cfg.hflip,
                                         device=self.device, accel=self.accel)  # fmt: skip
        return self._pixels[split]

    def _report_late_skips(self) -> None:
        """Images found undecodable while decoding (corrupt, or vanished or changed since the
        folder was read) join skipped.txt and are named on screen (rank 0 does both)."""
        if self.ctx.is_main and len(self.data.ds.skipped) > self._skips_reported:
            self.run.report_skipped(self.data.ds.skipped, self.out, since=self._skips_reported)
            self._skips_reported = len(self.data.ds.skipped)

    def source(
        self, split: str, frozen: bool, collective: bool = False
    ) -> tuple[Source, nn.Module]:
        """(inputs, plain module to run on them) for the current stage."""
        if self.cfg.cacheable(frozen):
            return self.feature_source(split, collective), self.model.head
        return self.pixel_source(split, collective and self.ctx.enabled), self.model


def _accel(cfg: FinetuneConfig, device: torch.device) -> Accel:
    """--amp / --compile checked for this device; LBFGS refuses mixed precision."""
    accel = Accel.create(cfg.amp, cfg.compile, device)
    if cfg.optimizer == "lbfgs" and accel.amp != "off":
        raise BadInput(
            f"--amp {accel.amp} does not work with --optimizer lbfgs: its closure re-evaluates "
            "the loss for a line search that loss scaling and low precision would mislead.",
            hint="Use --amp off with lbfgs, or another --optimizer (e.g. adamw) with --amp.",
        )
    return accel


def _check_resume(meta: dict[str, Any], model: nn.Module, info: dict[str, Any],
                  ds: ImageDataset, cfg: FinetuneConfig) -> None:  # fmt: skip
    """The checkpoint must fit the model this command line builds."""
    saved = meta.get("arch", {})
    now = arch_meta(cfg.backbone, len(ds.class_names), cfg.head, cfg.hidden, cfg.dropout,
                    info.get("in_chans", saved.get("in_chans", 3)), cfg.image_size)  # fmt: skip
    keys = ("backbone", "num_classes", "head", "hidden")
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in keys
             if saved.get(k) != now[k]]  # fmt: skip
    if diffs:
        raise BadInput(
            "--resume: the checkpoint's model does not match this command ("
            + "; ".join(diffs)
            + ").",
            hint="Resume with the original options (they are in the run's config.yaml), or start "
            "a new run with a new --name.",
        )
    if meta.get("data", {}).get("fingerprint") != ds.fingerprint:
        raise BadInput(
            f"--resume: the data {cfg.data} changed since the run started (fingerprint differs).",
            hint="Resume on the same data, or start a new run.",
        )
