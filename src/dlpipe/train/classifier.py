"""`dlpipe finetune` as a stage: (FinetuneConfig, run_dir) -> result dict.

The recipe: open the data and its split, build the backbone with its pretrained weights and a new
head, freeze it (BatchNorm statistics included), train the head on cached features while frozen,
optionally unfreeze with a discriminative learning rate, keep best/last checkpoints, and evaluate
the best weights on the held-out split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..runs import RunDir


@dataclass
class FinetuneConfig:
    """Every option of `dlpipe finetune` (the CLI flags and a pipeline stage map onto this)."""

    backbone: str = "mobilenet_v2"  # torchvision name, timm/<name>, or mnist_cnn / mnist_cnn_bn
    data: str = "mnist5k"  # built-in set or folder (ImageFolder)
    data_root: str | None = None  # where a built-in set lives, if not the default place
    weights: str = "DEFAULT"  # DEFAULT | torchvision enum name | none | path to a state dict
    image_size: int | None = None  # resize side (no crop); None: the weights' own resize+crop
    head: str = "linear"  # linear | mlp
    hidden: int | None = None  # mlp width; None -> 256 (sane 64-1024)
    dropout: float = 0.0  # dropout before the head's last layer (0-0.5)
    freeze: bool = True  # freeze the backbone, BatchNorm statistics included
    train_bn: bool = False  # with freeze: let BatchNorm layers train (stats and affine)
    unfreeze_after: int | None = None  # unfreeze the backbone after K epochs (None: never)
    backbone_lr_mult: float | None = None  # backbone lr = lr * this; None: 0.1 pretrained, 1 none
    augment: bool = False  # random resized crop each step (disables the feature cache)
    hflip: bool = False  # with augment: random horizontal flips (not for digits/text)
    optimizer: str = "adamw"  # sgd | momentum | nesterov | adam | adamw | lbfgs
    lr: float = 1e-3  # head learning rate (adamw 1e-4..3e-3; sgd 1e-2..1e-1)
    weight_decay: float = 1e-4  # decoupled for adamw, L2 otherwise (0-0.05)
    scheduler: str = "cosine"  # none | cosine | step | onecycle
    warmup_epochs: float = 0.0  # linear warmup length in epochs (0-5)
    label_smoothing: float = 0.0  # 0-0.2
    epochs: int = 10  # passes over the training split
    batch_size: int = 64  # images (or feature rows) per step
    patience: int | None = None  # early stop after this many epochs without val-loss gain
    val_fraction: float = 0.1  # share of each class for validation
    test_fraction: float = 0.1  # share held out for the final test (official test set if any)
    limit: int | None = None  # at most N training images (stratified)
    eval_limit: int | None = None  # at most N validation and N test images (stratified)
    seed: int = 0  # split, init, data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # bit-reproducible kernels
    amp: str = "off"  # off | bf16 | fp16 (autocast; GradScaler for fp16)
    compile: bool = False  # torch.compile the training module
    sync_bn: bool = True  # with several processes: BatchNorm statistics of the global batch
    strict: bool = False  # fail on unreadable files instead of skipping them
    feature_batch_size: int = 128  # batch of the one-off backbone pass (32-512)
    stop_after: int | None = None  # stop after N epochs this call, as if interrupted (tests)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (saved as the run's config.yaml)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        """Inverse of to_dict; unknown keys are ignored."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def pretrained(self) -> bool:
        return self.weights.lower() != "none"

    @property
    def body_lr_mult(self) -> float:
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return 0.1 if self.pretrained else 1.0

    def cacheable(self, frozen: bool) -> bool:
        """Features can be cached while the backbone is frozen, unaugmented, its BN fixed."""
        return frozen and not self.augment and not self.train_bn


def run_finetune(
    cfg: FinetuneConfig, run_dir: RunDir | str | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train (or resume) a classifier in `run_dir`; returns {run_dir, artifacts, metrics, ...}."""
    from ..cli.common import Output
    from ..distributed import on_main
    from .classifier_report import finish
    from .classifier_session import Session
    from .classifier_train import train_all

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    session = Session.start(cfg, run, out or Output(quiet=True), resume)
    ctx = session.ctx  # under torchrun: every rank trains, rank 0 alone writes
    if ctx.is_main:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        if not resume:
            run.write_config(cfg.to_dict())
    train_all(session)
    if cfg.stop_after is not None and session.epoch < cfg.epochs and session.stopped is None:
        return {"run_dir": str(run.path), "artifacts": {"last": str(run.checkpoint("last"))},
                "metrics": {"epochs_run": session.epoch, "interrupted": True}}  # fmt: skip
    return on_main(lambda: finish(session), ctx)
