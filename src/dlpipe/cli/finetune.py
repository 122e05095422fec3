"""`dlpipe finetune`: a frozen pretrained backbone and a new head."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from .common import (
    BUILTIN_NAMES,
    AmpOpt,
    BatchSizeOpt,
    CompileOpt,
    DataRootOpt,
    DeterministicOpt,
    DeviceOpt,
    EpochsOpt,
    ExistOkOpt,
    JsonOpt,
    LimitOpt,
    LogOpt,
    NameOpt,
    NprocOpt,
    Output,
    QuietOpt,
    ResumeOpt,
    RunsDirOpt,
    SeedOpt,
    StrictOpt,
    SyncBnOpt,
    TestFractionOpt,
    ValFractionOpt,
    command,
    launch_if_asked,
)
from .stage import ConfigFileOpt, run_from_cli

_O = typer.Option


@command
def finetune(
    ctx: typer.Context,
    backbone: Annotated[
        str,
        _O(
            "--backbone",
            help="torchvision name (densenet121, resnet18, "
            "mobilenet_v2, vit_b_16, ...), timm/<name>, or mnist_cnn[_bn].",
        ),
    ] = "mobilenet_v2",  # fmt: skip
    data: Annotated[
        str,
        _O(
            "--data",
            "-d",
            help=f"Built-in set ({BUILTIN_NAMES}) or an ImageFolder directory.",
        ),
    ] = "mnist5k",  # fmt: skip
    weights: Annotated[
        str,
        _O(
            "--weights",
            help="DEFAULT (offline first), a torchvision weights "
            "name (IMAGENET1K_V1), none, or a .pth/.pt/.safetensors state dict.",
        ),
    ] = "DEFAULT",  # fmt: skip
    image_size: Annotated[
        int | None,
        _O(
            "--image-size",
            min=8,
            help="Resize inputs to SxS (no "
            "crop), e.g. 64-96 for 28 px digits; default: the weights' own resize+crop.",
        ),
    ] = None,  # fmt: skip
    head: Annotated[
        Literal["linear", "mlp"], _O("--head", help="mlp = Linear-BatchNorm-ReLU-Dropout-Linear.")
    ] = "linear",  # fmt: skip
    hidden: Annotated[
        int | None, _O("--hidden", min=1, help="Width of the mlp head (256).")
    ] = None,
    dropout: Annotated[
        float, _O("--dropout", min=0.0, max=0.95, help="Dropout in the head.")
    ] = 0.0,
    freeze: Annotated[
        bool | None,
        _O(
            "--freeze/--no-freeze",
            help="Freeze the backbone, BatchNorm statistics included [default: freeze pretrained "
            "weights; train the whole network from scratch with --weights none].",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    train_bn: Annotated[
        bool,
        _O(
            "--train-bn",
            help="Let BatchNorm layers train (statistics and affine), also after unfreezing "
            "[default: they keep their pretrained statistics].",
        ),
    ] = False,  # fmt: skip
    unfreeze_after: Annotated[
        int | None, _O("--unfreeze-after", min=0, help="Unfreeze the backbone after K epochs.")
    ] = None,  # fmt: skip
    backbone_lr_mult: Annotated[
        float | None,
        _O(
            "--backbone-lr-mult",
            min=0.0,
            help="Backbone lr = lr x this (default 0.1 pretrained, 1 from scratch).",
        ),
    ] = None,  # fmt: skip
    augment: Annotated[
        bool, _O("--augment", help="Random resized crops (slow path: no feature cache).")
    ] = False,  # fmt: skip
    hflip: Annotated[bool, _O("--hflip", help="With --augment: random horizontal flips.")] = False,
    optimizer: Annotated[
        Literal["sgd", "momentum", "nesterov", "adam", "adamw", "lbfgs"],
        _O("--optimizer", help="Optimizer of the trainable parameters (lbfgs: no scheduler)."),
    ] = "adamw",  # fmt: skip
    lr: Annotated[float, _O("--lr", min=0.0, help="Learning rate of the head.")] = 1e-3,
    weight_decay: Annotated[float, _O("--weight-decay", min=0.0, help="Weight decay.")] = 1e-4,
    scheduler: Annotated[
        Literal["none", "cosine", "step", "onecycle"],
        _O("--scheduler", help="Learning-rate schedule."),
    ] = "cosine",
    warmup_epochs: Annotated[float, _O("--warmup-epochs", min=0.0, help="Linear lr warmup.")] = 0.0,
    label_smoothing: Annotated[
        float, _O("--label-smoothing", min=0.0, max=0.5, help="Label smoothing.")
    ] = 0.0,  # fmt: skip
    head_fit: Annotated[
        Literal["auto", "epochs"],
        _O(
            "--head-fit",
            help="auto: while the backbone is frozen, solve the head on the cached features "
            "(linear: L-BFGS, weight decay chosen on the validation split; mlp: many epochs, "
            "early-stopped on validation loss) instead of counting --epochs. epochs: train it "
            "--epochs passes with --optimizer.",
        ),
    ] = "auto",  # fmt: skip
    unfreeze_label_smoothing: Annotated[
        float,
        _O(
            "--unfreeze-label-smoothing",
            min=0.0,
            max=0.5,
            help="Label smoothing once the backbone trains (after --unfreeze-after).",
        ),
    ] = 0.1,  # fmt: skip
    patience: Annotated[
        int | None,
        _O("--patience", min=1, help="Stop after N epochs without validation-loss improvement."),
    ] = None,  # fmt: skip
    eval_limit: Annotated[
        int | None,
        _O("--eval-limit", min=1, help="At most N validation and N test images (stratified)."),
    ] = None,  # fmt: skip
    epochs: EpochsOpt = 10,
    batch_size: BatchSizeOpt = 64,
    val_fraction: ValFractionOpt = 0.1,
    test_fraction: TestFractionOpt = 0.1,
    limit: LimitOpt = None,
    data_root: DataRootOpt = None,
    strict: StrictOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    deterministic: DeterministicOpt = False,
    nproc: NprocOpt = 1,
    amp: AmpOpt = "off",
    compile: CompileOpt = False,
    sync_bn: SyncBnOpt = True,
    runs_dir: RunsDirOpt = Path("runs"),
    name: NameOpt = None,
    exist_ok: ExistOkOpt = False,
    resume: ResumeOpt = False,
    stop_after: Annotated[int | None, _O("--stop-after", min=1, hidden=True)] = None,
    config_file: ConfigFileOpt = None,
    log: LogOpt = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a new head on a frozen pretrained backbone (any torchvision or timm model).

    The backbone is frozen with its BatchNorm statistics, its features are computed once and
    cached, and the head trains on them in milliseconds per epoch. --unfreeze-after K then trains
    the whole network with a smaller backbone learning rate. Writes runs/finetune/<name>/ with
    best/last checkpoints, metrics.csv, curves.png and confusion.png, and reports the held-out
    accuracy. Example: dlpipe finetune --backbone mobilenet_v2 --data mnist5k --image-size 96
    (names: dlpipe backbones list)

    Several processes (DDP): dlpipe finetune --nproc 4 ..., or torchrun --nproc-per-node 4 -m
    dlpipe finetune ...; each computes its shard of the cached features once.
    """
    out = Output(json, quiet)
    launch_if_asked(ctx, nproc, device)
    result = run_from_cli(ctx, "finetune", out, config_file)
    acc = result["metrics"].get("held_out_acc")
    score = (
        "no held-out accuracy (no held-out images)"
        if acc is None or acc != acc
        else f"held-out accuracy {acc:.4f}"
    )
    out.result(result, f"{score}; run folder {result['run_dir']}")


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("finetune")(finetune)
