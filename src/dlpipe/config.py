"""Every training command's options, in one place: default, sane range, choices and help per field.

The CLI, pipeline files and the Python API all build these dataclasses; `tests/test_config.py`
checks that each Typer option has the default, range and choices written here. No torch import.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

from . import noise as noise_kinds
from .errors import BadInput

C = TypeVar("C", bound="ConfigBase")
REQUIRED: Any = dataclasses.MISSING  # a knob without a default: the caller must give it


def knob(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its default and the metadata the CLI and checks read."""
    return dataclasses.field(
        default=default, metadata={"help": help, "lo": lo, "hi": hi, "choices": choices}
    )


class ConfigBase:
    """Shared behaviour: dict round trip and checking values against the field metadata."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (saved as the run's config.yaml)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, strict: bool = False) -> C:
        """Inverse of to_dict. Unknown keys are ignored, or refused with the closest name."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if strict and unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            raise BadInput(
                f"{cls.__name__}: unknown option {unknown[0]!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + ".",
                hint=f"Valid options: {', '.join(names)}.",
            )
        cfg = cls(**{k: v for k, v in data.items() if k in names})
        cfg.check()
        return cfg

    def check(self) -> None:
        """Every value within its field's range and choices, or BadInput naming the option."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            self.check_value(f.name, getattr(self, f.name))

    @classmethod
    def check_value(cls, name: str, value: Any) -> None:
        """One option's value against its range and choices (BadInput naming the option)."""
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}.get(name, {})  # type: ignore[arg-type]
        flag = "--" + name.replace("_", "-")
        if value is None or isinstance(value, bool):
            return
        if meta.get("choices") and value not in meta["choices"]:
            close = difflib.get_close_matches(str(value), meta["choices"], n=1)
            raise BadInput(
                f"{flag} {value!r} is not one of {', '.join(meta['choices'])}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "."
            )
        if isinstance(value, int | float):
            lo, hi = meta.get("lo"), meta.get("hi")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
                raise BadInput(f"{flag} {value} is outside its range {bounds}.")


AMP = ("off", "bf16", "fp16")


@dataclass
class FinetuneConfig(ConfigBase):
    """Every option of `dlpipe finetune` (the CLI flags and a pipeline stage map onto this)."""

    backbone: str = knob("mobilenet_v2", "torchvision name, timm/<name>, or mnist_cnn[_bn]")
    data: str = knob("mnist5k", "built-in set or folder (ImageFolder)")
    data_root: str | None = knob(None, "where a built-in set lives, if not the default place")
    weights: str = knob("DEFAULT", "DEFAULT | torchvision enum name | none | state-dict path")
    image_size: int | None = knob(None, "resize side, no crop (None: the weights' own)", lo=8)
    head: str = knob("linear", "linear | mlp", choices=("linear", "mlp"))
    hidden: int | None = knob(None, "mlp width; None -> 256 (sane 64-1024)", lo=1)
    dropout: float = knob(0.0, "dropout before the head's last layer (0-0.5)", lo=0.0, hi=0.95)
    # None: freeze a pretrained backbone, train a from-scratch one (--weights none) whole
    freeze: bool | None = knob(None, "freeze the backbone, BatchNorm statistics included")
    train_bn: bool = knob(False, "with freeze: let BatchNorm layers train")
    unfreeze_after: int | None = knob(None, "unfreeze the backbone after K epochs", lo=0)
    backbone_lr_mult: float | None = knob(None, "backbone lr = lr x this (0.1 / 1)", lo=0.0)
    augment: bool = knob(False, "random resized crop each step (no feature cache)")
    hflip: bool = knob(False, "with augment: random horizontal flips")
    optimizer: str = knob(
        "adamw",
        "optimizer",
        choices=("sgd", "momentum", "nesterov", "adam", "adamw", "lbfgs"),
    )
    lr: float = knob(1e-3, "head learning rate (adamw 1e-4..3e-3; sgd 1e-2..1e-1)", lo=0.0)
    weight_decay: float = knob(1e-4, "decoupled for adamw, L2 otherwise (0-0.05)", lo=0.0)
    scheduler: str = knob("cosine", "lr schedule", choices=("none", "cosine", "step", "onecycle"))
    warmup_epochs: float = knob(0.0, "linear warmup length in epochs (0-5)", lo=0.0)
    label_smoothing: float = knob(0.0, "0-0.2", lo=0.0, hi=0.5)
    epochs: int = knob(10, "passes over the training split", lo=1)
    batch_size: int = knob(64, "images (or feature rows) per step", lo=1)
    patience: int | None = knob(None, "early stop after N epochs without val-loss gain", lo=1)
    val_fraction: float = knob(0.1, "share of each class for validation", lo=0.0, hi=0.9)
    test_fraction: float = knob(0.1, "share held out for the final test", lo=0.0, hi=0.9)
    limit: int | None = knob(None, "at most N training images (stratified)", lo=1)
    eval_limit: int | None = knob(None, "at most N validation and N test images", lo=1)
    seed: int = knob(0, "split, init, data order")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    deterministic: bool = knob(False, "bit-reproducible kernels")
    amp: str = knob("off", "mixed precision", choices=AMP)
    compile: bool = knob(False, "torch.compile the training module")
    sync_bn: bool = knob(True, "with several processes: BatchNorm statistics of the global batch")
    strict: bool = knob(False, "fail on unreadable files instead of skipping them")
    feature_batch_size: int = knob(128, "batch of the one-off backbone pass (32-512)", lo=1)
    stop_after: int | None = knob(None, "stop after N epochs this call, as if interrupted", lo=1)
    log: str | None = knob(
        None, "trackers besides metrics.csv: tensorboard, mlflow (comma-separated)"
    )
    # auto: while frozen on cached features, solve the head instead of counting epochs
    head_fit: str = knob(
        "auto",
        "auto: linear head by L-BFGS (weight decay picked on val), mlp head early-stopped; "
        "epochs: --epochs passes of --optimizer",
        choices=("auto", "epochs"),
    )
    unfreeze_label_smoothing: float = knob(
        0.1, "label smoothing once the backbone trains (--unfreeze-after); 0-0.2", lo=0.0, hi=0.5
    )

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights."""
        return self.weights.lower() != "none"

    @property
    def frozen(self) -> bool:
        """The resolved --freeze: a from-scratch backbone trains whole unless frozen explicitly."""
        if self.freeze is None:  # a staged run starts frozen whatever its weights
            return self.pretrained or self.unfreeze_after is not None
        return self.freeze

    @property
    def body_lr_mult(self) -> float:
        """Backbone lr multiplier after the pretrained/scratch default."""
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return 0.1 if self.pretrained else 1.0

    @property
    def staged(self) -> bool:
        """Frozen first, then unfrozen after --unfreeze-after epochs."""
        return self.frozen and self.unfreeze_after is not None

    def solves_head(self) -> bool:
        """Is the frozen head solved (--head-fit auto on cached features) rather than trained?"""
        return self.head_fit == "auto" and self.frozen and self.cacheable(True)

    def cacheable(self, frozen: bool) -> bool:
        """Features can be cached while the backbone is frozen, unaugmented, its BN fixed."""
        return frozen and not self.augment and not self.train_bn


@dataclass
class GanConfig(ConfigBase):
    """Everything `dlpipe gan train` needs; the YAML stage `gan` maps onto the same fields."""

    # what the checkpoint's shapes depend on: --resume refuses to change these
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ("nz", "ngf", "ndf", "image_size", "data")

    data: str = knob("mnist5k", "built-in set or folder (labels are ignored)")
    data_root: str | None = knob(None, "where a built-in set's files are, if not the default")
    strict: bool = knob(False, "fail on unreadable files instead of skipping them")
    image_size: int | None = knob(None, "output side 28|32|64; None = the data's side")
    nz: int = knob(100, "latent size; 64-128 is the usual range", lo=1, hi=4096)
    # G and D base channels: 64 at every size. 32 (the rule up to 32 px before) learned slower per
    # CPU second on mnist5k (benchmarks/results/quality.md); ngf None, in a config from before,
    # resumes with its checkpoint's channels (a new run reads it as 64).
    ngf: int | None = knob(64, "G base channels; 32-128", lo=1, hi=1024)
    ndf: int | None = knob(None, "D base channels; None = like ngf", lo=1, hi=1024)
    epochs: int = knob(20, "passes over the training images; mnist5k shows digits after ~5", lo=1)
    # Batch 32 and lr 4e-4, not the DCGAN paper's 128 and 2e-4: a short CPU run is limited by the
    # number of updates, and on CPU an epoch costs the same at batch 32 as at 64 (mnist5k, 10
    # epochs: fd 101 vs 333; then lr 4e-4 vs 2e-4: fd 84 vs 101 after 10, 51 vs 62 after 20)
    batch_size: int = knob(32, "images per step; 32-128 (DCGAN paper: 128)", lo=1)
    lr: float = knob(4e-4, "Adam learning rate for G and D; 1e-4 - 5e-4 (DCGAN: 2e-4)", lo=0.0)
    beta1: float = knob(0.5, "Adam beta1 (DCGAN: 0.5; 0.9 oscillates)", lo=0.0, hi=0.999)
    label_smoothing: float = knob(0.9, "D's target for real images; 1.0 = off", lo=0.5, hi=1.0)
    ema: bool = knob(True, "export an exponential-moving-average generator (BN recalibrated)")
    ema_decay: float = knob(0.999, "EMA decay per step (with warm-up); 0.99-0.9999", lo=0.0, hi=1.0)
    d_steps: int = knob(1, "discriminator updates per generator update; 1-5", lo=1, hi=100)
    val_fraction: float = knob(0.0, "a GAN needs no validation split", lo=0.0, hi=0.9)
    test_fraction: float = knob(0.1, "held-out share: the real images fd/kid compare against", lo=0.0, hi=0.9)  # fmt: skip
    limit: int | None = knob(None, "use at most N training images", lo=1)
    fd_every: int = knob(5, "fd/kid every K epochs and at the end; 0 = never", lo=0)
    fd_images: int = knob(1000, "at most this many images per side for fd/kid", lo=2, hi=100_000)
    fd_image_size: int = knob(96, "side fed to mobilenet_v2 for features", lo=32, hi=512)
    collapse_steps: int = knob(200, "warn when D wins for this many consecutive steps", lo=1)
    seed: int = knob(0, "split, initialisation, noise and data order")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    deterministic: bool = knob(False, "bit-reproducible kernels")
    amp: str = knob("off", "mixed precision", choices=AMP)
    compile: bool = knob(False, "torch.compile G and D for training")
    sync_bn: bool = knob(True, "with several processes: BatchNorm statistics of the global batch")
    log: str | None = knob(
        None, "trackers besides metrics.csv: tensorboard, mlflow (comma-separated)"
    )

    def resolved_channels(self, image_size: int) -> tuple[int, int]:
        """(ngf, ndf) of a new run; None (a config from before 64 at every size) reads as 64."""
        ngf = self.ngf or 64
        return ngf, self.ndf or ngf


@dataclass
class AeConfig(ConfigBase):
    """Everything `dlpipe ae train` needs; the YAML stage `ae` maps onto the same fields."""

    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ("latent", "width", "image_size", "data")

    data: str = knob("mnist5k", "built-in set or folder (labels are ignored)")
    data_root: str | None = knob(None, "where a built-in set's files are, if not the default")
    strict: bool = knob(False, "fail on unreadable files instead of skipping them")
    image_size: int | None = knob(None, "side; None = the data's side (28 for MNIST)")
    latent: int = knob(32, "bottleneck size; 16-128 (smaller compresses more)", lo=1, hi=65536)
    width: int | None = knob(
        None, "channels of the first stage, doubled per stage; None = 16 (unet) / 32 (conv)",
        lo=1, hi=1024,
    )  # fmt: skip
    noise: str | None = knob(None, f"{noise_kinds.spec_help()}; None = plain AE")
    # unet: skips at every scale + residual output (denoising); conv: a compressing latent
    arch: str | None = knob(
        None, "unet | conv; None = unet with --noise, conv without", choices=("unet", "conv")
    )
    loss: str = knob("mse", "per-pixel loss", choices=("mse", "bce"))
    epochs: int = knob(10, "passes over the training images", lo=1)
    batch_size: int | None = knob(None, "images per step; None = 8 (unet) / 64 (conv)", lo=1)
    lr: float = knob(
        2e-3,
        "Adam learning rate; 5e-4 - 3e-3 (unet: a tenth in the last fifth of the epochs)",
        lo=0.0,
    )
    val_fraction: float = knob(0.1, "share held out for per-epoch validation", lo=0.0, hi=0.9)
    test_fraction: float = knob(0.1, "share held out for the final PSNR/SSIM", lo=0.0, hi=0.9)
    limit: int | None = knob(None, "use at most N training images", lo=1)
    eval_limit: int | None = knob(
        None, "at most N validation and N test images evaluated (spread over the classes)", lo=1
    )
    seed: int = knob(0, "split, initialisation, noise and data order")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    deterministic: bool = knob(False, "bit-reproducible kernels")
    amp: str = knob("off", "mixed precision", choices=AMP)
    compile: bool = knob(False, "torch.compile the training model")
    log: str | None = knob(
        None, "trackers besides metrics.csv: tensorboard, mlflow (comma-separated)"
    )

    @property
    def net(self) -> str:
        """The resolved --arch: a U-Net denoiser with --noise, a compressing conv AE without."""
        if self.arch is not None:
            return self.arch
        return "conv" if noise_kinds.is_off(self.noise) else "unet"

    # The U-Net denoiser's recipe (issue 12): at 1,500 images x 15 epochs, batch 16 (4x the Adam
    # steps of batch 64) gained +1.4 dB on mnist5k, +0.8 on Fashion-MNIST; width 16 then matched
    # width 32 (within 0.15 dB either way) at a third of the CPU time per image. Batch 8 with the
    # last fifth of the epochs at lr/10 (UNET_ANNEAL) then gained +0.28 dB on mnist5k, +0.22 on
    # Fashion-MNIST and +0.47 on 8x8 digits (seed 0; either alone: within 0.2 dB; seeds 1 and 2:
    # +0.12 / +1.13 and +0.26 / +0.22 dB on mnist5k / Fashion-MNIST).
    NET_DEFAULTS: ClassVar[dict[str, dict[str, int]]] = {
        "unet": {"width": 16, "batch_size": 8},
        "conv": {"width": 32, "batch_size": 64},
    }
    UNET_ANNEAL: ClassVar[tuple[float, float]] = (0.2, 0.1)  # (share of last epochs, lr factor)

    def lr_at(self, epoch: int) -> float:
        """Adam's learning rate in epoch `epoch` (1-based): `lr`, except for the U-Net's last
        fifth of the epochs (rounded; none for fewer than 3), which run at a tenth of it."""
        share, factor = self.UNET_ANNEAL
        last = round(self.epochs * share) if self.net == "unet" else 0
        return self.lr * factor if epoch > self.epochs - last else self.lr

    def resolved(self) -> AeConfig:
        """This config with width and batch_size filled in from the net's defaults where None
        (what config.yaml records, so a resumed run keeps them whatever later defaults say)."""
        fill = {k: v for k, v in self.NET_DEFAULTS[self.net].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill) if fill else self


@dataclass
class SampleConfig(ConfigBase):
    """`dlpipe gan sample`: a grid from a generator (run folder, checkpoint or ONNX file)."""

    model: str = knob(REQUIRED, "a GAN run folder, its .safetensors checkpoint, or an ONNX file")
    num: int = knob(64, "number of samples", lo=1, hi=4096)
    out: str = knob("samples.png", "PNG file to write")
    seed: int = knob(0, "noise seed (same seed, same grid)")
    interpolate: bool = knob(False, "rows of 8 images walking between two random latents")


@dataclass
class DataExportConfig(ConfigBase):
    """`dlpipe data export`: a built-in set written as an ImageFolder of PNGs."""

    name: str = knob(REQUIRED, "built-in data set (see `dlpipe data list`)")
    out_dir: str = knob(REQUIRED, "folder to create: one subfolder of PNGs per class")
    data_root: str | None = knob(None, "where the set's files are, if not the default place")
    limit: int | None = knob(None, "write at most N images (stratified)", lo=1)
    force: bool = knob(False, "replace OUT_DIR if it already exists")
