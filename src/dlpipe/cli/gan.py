"""`dlpipe gan train|sample`: DCGANs."""

from __future__ import annotations

from pathlib import Path
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
    SyncBnOpt,
    TestFractionOpt,
    command,
    launch_if_asked,
)

app = typer.Typer(help="Train DCGANs and sample from them.", no_args_is_help=True)

EpochsOrSavedOpt = Annotated[
    int | None,
    typer.Option(
        "--epochs", min=1, help="Passes over the training images [default: 20; --resume: saved]."
    ),
]


def config_from_run(cls: type, run) -> object:  # noqa: ANN001 - RunDir
    """The run's saved options as `cls`, refusing (not crashing on) a foreign config.yaml."""
    import dataclasses

    from ..errors import BadInput

    saved = run.read_config()
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise BadInput(
            f"--resume: {run.path / 'config.yaml'} has options this command does not know "
            f"({', '.join(unknown[:5])}); it belongs to another command or dlpipe version.",
            hint="Resume it with the command that made it, or start a new run with a new --name.",
        )
    return cls(**saved)


@app.command("train")
@command
def train(
    ctx: typer.Context,
    data: DataOpt = "mnist5k",
    data_root: DataRootOpt = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Output side: 28, 32 or 64 [default: the data's]."),
    ] = None,
    nz: Annotated[int, typer.Option("--nz", min=1, help="Latent size.")] = 100,
    ngf: Annotated[
        int | None,
        typer.Option("--ngf", min=1, help="G base channels [default: 32 (<=32 px), 64]."),
    ] = None,
    ndf: Annotated[
        int | None, typer.Option("--ndf", min=1, help="D base channels [default: like --ngf].")
    ] = None,
    epochs: EpochsOrSavedOpt = None,
    batch_size: BatchSizeOpt = 64,
    lr: Annotated[
        float, typer.Option("--lr", min=0.0, help="Adam learning rate (G and D).")
    ] = 2e-4,
    beta1: Annotated[float, typer.Option("--beta1", help="Adam beta1.")] = 0.5,
    label_smoothing: Annotated[
        float,
        typer.Option(
            "--label-smoothing", min=0.5, max=1.0, help="D's target for real images (1 = off)."
        ),
    ] = 0.9,
    ema: Annotated[
        bool, typer.Option("--ema/--no-ema", help="Export an exponential-moving-average generator.")
    ] = False,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="EMA decay per step.")] = 0.999,
    d_steps: Annotated[
        int, typer.Option("--d-steps", min=1, help="Discriminator updates per generator update.")
    ] = 1,
    fd_every: Annotated[
        int,
        typer.Option("--fd-every", min=0, help="fd/kid every K epochs and at the end (0: never)."),
    ] = 5,
    fd_images: Annotated[
        int, typer.Option("--fd-images", min=2, help="Images per side for fd/kid (at most).")
    ] = 1000,
    test_fraction: TestFractionOpt = 0.1,
    limit: LimitOpt = None,
    strict: StrictOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    deterministic: DeterministicOpt = False,
    nproc: NprocOpt = 1,
    amp: AmpOpt = "off",
    compile: CompileOpt = False,
    sync_bn: SyncBnOpt = True,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    name: NameOpt = None,
    exist_ok: ExistOkOpt = False,
    resume: ResumeOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a DCGAN (Radford et al.): sample grids every epoch, losses and D(x)/D(G(z)) in
    metrics.csv, fd/kid on mobilenet_v2 features against held-out images, checkpoints with --resume.

    Example: dlpipe gan train --data mnist5k --epochs 20 (on 4 GPUs: add --nproc 4, or run it
    with torchrun --nproc-per-node 4 -m dlpipe gan train ...; --batch-size stays the global batch).
    """
    from ..config import GanConfig
    from ..distributed import on_main, setup
    from ..runs import create_run_dir, run_to_resume, tidy_on_failure
    from ..train.accel import Accel
    from ..train.gan import train_gan

    out = Output(json_out, quiet)
    launch_if_asked(ctx, nproc, device)
    dist_ctx, device_obj = setup(device)
    Accel.create(amp, compile, device_obj)  # a bad --amp fails before a run folder exists
    if resume:
        run = on_main(lambda: run_to_resume("gan", name, runs_dir, "gan train"), dist_ctx)
        cfg = config_from_run(GanConfig, run)
        cfg.epochs = epochs or cfg.epochs
        cfg.device, cfg.amp, cfg.compile, cfg.sync_bn = device, amp, compile, sync_bn
    else:
        cfg = GanConfig(
            data=data, data_root=str(data_root) if data_root else None, strict=strict,
            image_size=image_size, nz=nz, ngf=ngf, ndf=ndf, epochs=epochs or 20,
            batch_size=batch_size, lr=lr, beta1=beta1, label_smoothing=label_smoothing, ema=ema,
            ema_decay=ema_decay, d_steps=d_steps, test_fraction=test_fraction, limit=limit,
            fd_every=fd_every, fd_images=fd_images, seed=seed, device=device,
            deterministic=deterministic, amp=amp, compile=compile, sync_bn=sync_bn,
        )  # fmt: skip
        run = on_main(lambda: create_run_dir("gan", name, runs_dir, exist_ok), dist_ctx)
    with tidy_on_failure(run):
        result = train_gan(cfg, run, out, resume=resume)
    m = result["metrics"]
    fd = (
        f"; fd_mobilenet_v2 {m['fd_mobilenet_v2']:.2f} (real-vs-real floor "
        f"{m['fd_mobilenet_v2_floor']:.2f})"
        if "fd_mobilenet_v2" in m
        else ""
    )
    out.result(
        result,
        f"Trained {m['epochs']} epochs{fd}. Run folder: {result['run_dir']} "
        f"(samples.png, progress.png, curves.png, checkpoints/last.safetensors)",
    )


@app.command("sample")
@command
def sample(
    model: Annotated[
        Path, typer.Argument(help="A GAN run folder, its .safetensors checkpoint, or an ONNX file.")
    ],
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="Number of samples.")] = 64,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "samples.png"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Noise seed (same seed, same grid).")] = 0,
    interpolate: Annotated[
        bool,
        typer.Option("--interpolate", help="Rows of 8 images walking between two random latents."),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample a grid from a trained generator. An ONNX file runs through onnxruntime alone (torch is
    never imported), as a deployed user would run it; a run folder uses its checkpoint.

    Example: dlpipe gan sample runs/gan/exp -n 64 --out grid.png --seed 1
    """
    from ..export.sample import sample_grid

    out = Output(json_out, quiet)
    info = sample_grid(model, n, out_path, seed=seed, interpolate=interpolate)
    out.result(
        {"artifacts": {"grid": info["out"]}, **info},
        f"Wrote {info['images']} samples ({info['runtime']}) to {info['out']}",
    )
