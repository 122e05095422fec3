"""`dlpipe ae train`: convolutional (denoising) autoencoders."""

from __future__ import annotations

from typing import Annotated

import typer

from ..runs import DEFAULT_RUNS_DIR
from .common import (
    AmpOpt,
    BatchSizeOpt,
    CompileOpt,
    DataOpt,
    DataRootOpt,
    DeterministicOpt,
    DeviceOpt,
    ExistOkOpt,
    JsonOpt,
    LimitOpt,
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

app = typer.Typer(help="Train convolutional (denoising) autoencoders.", no_args_is_help=True)


@app.command("train")
@command
def train(
    ctx: typer.Context,
    data: DataOpt = "mnist5k",
    data_root: DataRootOpt = None,
    latent: Annotated[
        int, typer.Option("--latent", min=1, help="Bottleneck size (--arch conv).")
    ] = 32,
    noise: Annotated[
        str | None,
        typer.Option(
            "--noise",
            help="Denoising: corrupt inputs on the fly, clean image as target. gaussian:SIGMA, "
            "saltpepper:SHARE or mask:SHARE (e.g. gaussian:0.3). Default: plain autoencoder.",
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="unet: skip connections at every scale and a residual output (the denoiser; "
            "exports --part full only). conv: a compressing autoencoder with a --latent vector "
            "(exports --part full|encoder|decoder). [default: unet with --noise, conv without]",
            show_default=False,
        ),
    ] = None,
    loss: Annotated[str, typer.Option("--loss", help="mse or bce.")] = "mse",
    width: Annotated[
        int,
        typer.Option(
            "--width", min=1, help="Channels of the first conv stage (doubled per stage)."
        ),
    ] = 32,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Image side [default: the data's].")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="Passes over the training images [default: 10; --resume: saved].",
        ),
    ] = None,
    batch_size: BatchSizeOpt = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Adam learning rate.")] = 2e-3,
    val_fraction: ValFractionOpt = 0.1,
    test_fraction: TestFractionOpt = 0.1,
    limit: LimitOpt = None,
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
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train an autoencoder; with --noise a denoising one (a U-Net predicting a residual by
    default), without it a compressing conv autoencoder (strided-conv encoder, transposed-conv
    decoder). Reports PSNR/SSIM on held-out images and the gain over the noisy input.

    Example: dlpipe ae train --data mnist5k --noise gaussian:0.3 (several processes: add
    --nproc N, or run it under torchrun; --batch-size stays the global batch).
    """
    from ..config import AeConfig
    from ..distributed import on_main, setup
    from ..runs import create_run_dir, run_to_resume, tidy_on_failure
    from ..train.accel import Accel
    from ..train.ae import train_autoencoder
    from .gan import config_from_run

    out = Output(json_out, quiet)
    launch_if_asked(ctx, nproc, device)
    dist_ctx, device_obj = setup(device)
    Accel.create(amp, compile, device_obj)  # a bad --amp fails before a run folder exists
    if resume:
        run = on_main(lambda: run_to_resume("ae", name, runs_dir, "ae train"), dist_ctx)
        cfg = config_from_run(AeConfig, run)
        cfg.epochs = epochs or cfg.epochs
        cfg.device, cfg.amp, cfg.compile = device, amp, compile
    else:
        cfg = AeConfig(
            data=data, data_root=str(data_root) if data_root else None, strict=strict,
            image_size=image_size, latent=latent, width=width, noise=noise, arch=arch, loss=loss,
            epochs=epochs or 10, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
            test_fraction=test_fraction, limit=limit, seed=seed, device=device,
            deterministic=deterministic, amp=amp, compile=compile,
        )  # fmt: skip
        run = on_main(lambda: create_run_dir("ae", name, runs_dir, exist_ok), dist_ctx)
    with tidy_on_failure(run):
        result = train_autoencoder(cfg, run, out, resume=resume)
    m = result["metrics"]
    line = f"held-out PSNR {m['psnr_db']:.2f} dB, SSIM {m['ssim']:.3f}" if "psnr_db" in m else ""
    if "psnr_gain_db" in m:
        line += f" (noisy input {m['noisy_psnr_db']:.2f} dB: gain {m['psnr_gain_db']:+.2f} dB)"
    out.result(
        result,
        f"Trained {m['epochs']} epochs; {line}. Run folder: {result['run_dir']} "
        "(reconstructions.png, curves.png, checkpoints/last.safetensors)",
    )
