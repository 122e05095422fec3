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
    command,
    launch_if_asked,
)
from .stage import ConfigFileOpt, run_from_cli

app = typer.Typer(help="Train DCGANs and sample from them.", no_args_is_help=True)

EpochsOpt = Annotated[
    int, typer.Option("--epochs", min=1, help="Passes over the training images (--resume: saved).")
]


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
    nz: Annotated[int, typer.Option("--nz", min=1, max=4096, help="Latent size.")] = 100,
    ngf: Annotated[
        int | None,
        typer.Option("--ngf", min=1, max=1024, help="G base channels (32-128)."),
    ] = 64,
    ndf: Annotated[
        int | None,
        typer.Option("--ndf", min=1, max=1024, help="D base channels [default: like --ngf]."),
    ] = None,
    epochs: EpochsOpt = 20,
    batch_size: BatchSizeOpt = 32,
    lr: Annotated[
        float, typer.Option("--lr", min=0.0, help="Adam learning rate (G and D).")
    ] = 4e-4,
    beta1: Annotated[float, typer.Option("--beta1", min=0.0, max=0.999, help="Adam beta1.")] = 0.5,
    label_smoothing: Annotated[
        float,
        typer.Option(
            "--label-smoothing", min=0.5, max=1.0, help="D's target for real images (1 = off)."
        ),
    ] = 0.9,
    ema: Annotated[
        bool, typer.Option("--ema/--no-ema", help="Export an exponential-moving-average generator.")
    ] = True,
    ema_decay: Annotated[
        float, typer.Option("--ema-decay", min=0.0, max=1.0, help="EMA decay per step.")
    ] = 0.999,
    d_steps: Annotated[
        int,
        typer.Option(
            "--d-steps", min=1, max=100, help="Discriminator updates per generator update."
        ),
    ] = 1,
    fd_every: Annotated[
        int,
        typer.Option("--fd-every", min=0, help="fd/kid every K epochs and at the end (0: never)."),
    ] = 5,
    fd_images: Annotated[
        int,
        typer.Option(
            "--fd-images", min=2, max=100_000, help="Images per side for fd/kid (at most)."
        ),
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
    config_file: ConfigFileOpt = None,
    log: LogOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a DCGAN (Radford et al.): sample grids every epoch, losses and D(x)/D(G(z)) in
    metrics.csv, fd/kid on mobilenet_v2 features against held-out images, checkpoints with --resume.

    Example: dlpipe gan train --data mnist5k --epochs 20 (on 4 GPUs: add --nproc 4, or run it
    with torchrun --nproc-per-node 4 -m dlpipe gan train ...; --batch-size stays the global batch).
    """
    out = Output(json_out, quiet)
    launch_if_asked(ctx, nproc, device)
    result = run_from_cli(ctx, "gan train", out, config_file)
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
    from ..stages import run_stage

    out = Output(json_out, quiet)
    options = {"model": model, "num": n, "out": out_path, "seed": seed, "interpolate": interpolate}
    info = run_stage("gan sample", options, out)
    out.result(
        info,
        f"Wrote {info['images']} samples ({info['runtime']}) to {info['out']}",
    )
