"""`dlpipe ae train`: convolutional (denoising) autoencoders."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from .. import noise as noise_kinds
from ..runs import DEFAULT_RUNS_DIR
from .common import (
    AmpOpt,
    CompileOpt,
    DataOpt,
    DataRootOpt,
    DeterministicOpt,
    DeviceOpt,
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
    TestFractionOpt,
    ValFractionOpt,
    command,
    launch_if_asked,
)
from .stage import ConfigFileOpt, run_from_cli

app = typer.Typer(help="Train convolutional (denoising) autoencoders.", no_args_is_help=True)


@app.command("train")
@command
def train(
    ctx: typer.Context,
    data: DataOpt = "mnist5k",
    data_root: DataRootOpt = None,
    latent: Annotated[
        int, typer.Option("--latent", min=1, max=65536, help="Bottleneck size (--arch conv).")
    ] = 32,
    noise: Annotated[
        str | None,
        typer.Option(
            "--noise",
            help="Denoising: corrupt inputs on the fly, clean image as target. "
            f"{noise_kinds.spec_help()} (e.g. {noise_kinds.KINDS['gaussian'].spec}). "
            "Default: plain autoencoder.",
        ),
    ] = None,
    arch: Annotated[
        Literal["unet", "conv"] | None,
        typer.Option(
            "--arch",
            help="unet: skip connections at every scale and a residual output (the denoiser; "
            "exports --part full only). conv: a compressing autoencoder with a --latent vector "
            "(exports --part full|encoder|decoder). [default: unet with --noise, conv without]",
            show_default=False,
        ),
    ] = None,
    loss: Annotated[
        Literal["mse", "bce"],
        typer.Option("--loss", help="Per-pixel loss (bce: near-binary images)."),
    ] = "mse",
    width: Annotated[
        int | None,
        typer.Option(
            "--width",
            min=1,
            max=1024,
            help="Channels of the first conv stage (doubled per stage). "
            "[default: 16 for unet, 32 for conv]",
            show_default=False,
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Image side [default: the data's].")
    ] = None,
    epochs: Annotated[
        int,
        typer.Option("--epochs", min=1, help="Passes over the training images (--resume: saved)."),
    ] = 10,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help="Images per optimisation step. [default: 8 for unet, 64 for conv]",
            show_default=False,
            rich_help_panel="Optimisation",
        ),
    ] = None,
    lr: Annotated[
        float,
        typer.Option(
            "--lr",
            min=0.0,
            help="Adam learning rate (unet: a tenth of it in the last fifth of the epochs).",
        ),
    ] = 2e-3,
    val_fraction: ValFractionOpt = 0.1,
    test_fraction: TestFractionOpt = 0.1,
    limit: LimitOpt = None,
    eval_limit: Annotated[
        int | None,
        typer.Option(
            "--eval-limit",
            min=1,
            help="At most N validation and N test images evaluated (spread over the classes).",
            rich_help_panel="Data",
        ),
    ] = None,
    strict: StrictOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    deterministic: DeterministicOpt = False,
    nproc: NprocOpt = 1,
    amp: AmpOpt = "off",
    compile: CompileOpt = False,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    name: NameOpt = None,
    exist_ok: ExistOkOpt = False,
    resume: ResumeOpt = False,
    config_file: ConfigFileOpt = None,
    log: LogOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train an autoencoder; with --noise a denoising one (a U-Net predicting a residual by
    default), without it a compressing conv autoencoder (strided-conv encoder, transposed-conv
    decoder). Reports PSNR/SSIM on held-out images and the gain over the noisy input.

    Example: dlpipe ae train --data mnist5k --noise gaussian:0.3 (several processes: add
    --nproc N, or run it under torchrun; --batch-size stays the global batch).
    """
    out = Output(json_out, quiet)
    launch_if_asked(ctx, nproc, device)
    result = run_from_cli(ctx, "ae train", out, config_file)
    m = result["metrics"]
    line = f"held-out PSNR {m['psnr_db']:.2f} dB, SSIM {m['ssim']:.3f}" if "psnr_db" in m else ""
    if "psnr_gain_db" in m:
        line += f" (noisy input {m['noisy_psnr_db']:.2f} dB: gain {m['psnr_gain_db']:+.2f} dB)"
    out.result(
        result,
        f"Trained {m['epochs']} epochs; {line}. Run folder: {result['run_dir']} "
        "(reconstructions.png, curves.png, checkpoints/last.safetensors)",
    )
