"""DCGAN training throughput vs a pytorch/examples-style loop, and DCGAN quality on mnist5k.

Throughput (side by side, one process, interleaved rounds): same architecture (dlpipe's Generator /
Discriminator), same batch size, same real mnist5k images at 28x28:
  reference = the loop of pytorch/examples `dcgan/main.py` (Sigmoid + BCELoss, zero_grad(),
              DataLoader over a TensorDataset of normalised float images, as a user would write it)
  dlpipe    = `dlpipe.train.gan.loop.run_epoch` with every extra on: one-sided label smoothing,
              EMA generator, NaN/Inf check and D(x)/D(G(z)) bookkeeping every step, collapse watch.
  Per-epoch evaluation (BN check/recalibration + sample grid) is timed separately and reported;
  fd/kid is excluded (it is a metric, run every K epochs).
Quality: `train_gan` with the defaults of `dlpipe gan train --data mnist5k` (20 epochs): wall time,
fd_mobilenet_v2 against the real-vs-real floor; the final grid is copied to benchmarks/results/.

    .venv/bin/python benchmarks/bench_gan.py [--rounds 5] [--steps 20] [--quality] [--epochs 20]
    .venv/bin/python benchmarks/bench_gan.py --record RUN_DIR   # results of an existing run
Writes benchmarks/results/gan.md (+ gan.json, gan_mnist5k_samples.png, gan_mnist5k_progress.png).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))


def machine() -> str:
    """nproc, CPU model, torch version and threads."""
    import torch

    cpu = platform.processor() or "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"nproc {nproc}, CPU {cpu}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, load average at start {' '.join(load)}"
    )


def reference_round(netG, netD, optG, optD, loader, nz: int, steps: int) -> float:  # noqa: ANN001
    """pytorch/examples dcgan/main.py's inner loop for `steps` batches; returns images/s."""
    import torch
    import torch.nn as nn

    criterion = nn.BCELoss()
    real_label, fake_label = 1.0, 0.0
    n, t0 = 0, time.perf_counter()
    for i, (data,) in enumerate(loader):
        if i == steps:
            break
        netD.zero_grad()
        real_cpu = data
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype)
        output = torch.sigmoid(netD(real_cpu))
        errD_real = criterion(output, label)
        errD_real.backward()
        noise = torch.randn(batch_size, nz, 1, 1)
        fake = netG(noise)
        label.fill_(fake_label)
        output = torch.sigmoid(netD(fake.detach()))
        errD_fake = criterion(output, label)
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        label.fill_(real_label)
        output = torch.sigmoid(netD(fake))
        errG = criterion(output, label)
        errG.backward()
        optG.step()
        errD_real.item(), errD_fake.item(), errG.item()  # the example prints these every step
        n += batch_size
    return n / (time.perf_counter() - t0)


def throughput(rounds: int, steps: int, batch: int) -> dict:
    """Interleaved rounds of reference vs dlpipe training steps on the same data."""
    import torch

    from dlpipe.config import GanConfig
    from dlpipe.console import quiet as Quiet
    from dlpipe.models.dcgan import build_discriminator, build_generator
    from dlpipe.runs import RunDir
    from dlpipe.train.gan.loop import GanState, _evaluate, run_epoch
    from dlpipe.train.images import load_image_data
    from dlpipe.train.interrupt import StopFlag

    cfg = GanConfig(data="mnist5k", batch_size=batch, ema=True, fd_every=0)
    data = load_image_data("mnist5k", None, False, None, 0.0, 0.1, 0, None, 0.5, 0.5, Quiet())
    state = GanState.create(cfg, data, torch.device("cpu"))
    pixels = torch.from_numpy(data.train)
    subset = pixels[: steps * batch]
    floats = pixels.float() / 127.5 - 1.0
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(floats), batch_size=batch, shuffle=True
    )
    ref_g, ref_d = build_generator(state.arch), build_discriminator(state.arch)
    opt_g = torch.optim.Adam(ref_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(ref_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ref, ours, evals = [], [], []
    tmp = RunDir(Path("/tmp/dlpipe-bench-gan"))
    for r in range(rounds + 1):  # round 0 warms both up and is not counted
        a = reference_round(ref_g, ref_d, opt_g, opt_d, loader, cfg.nz, steps)
        t0 = time.perf_counter()
        run_epoch(state, subset, 1, Quiet(), lambda n, info: None, StopFlag())
        b = len(subset) / (time.perf_counter() - t0)
        t1 = time.perf_counter()
        _evaluate(state, data, tmp, 1)
        if r:
            ref.append(a)
            ours.append(b)
            evals.append(time.perf_counter() - t1)
        print(f"round {r}: reference {a:.0f} img/s, dlpipe {b:.0f} img/s", flush=True)
    ratios = [b / a for a, b in zip(ref, ours, strict=True)]
    steps_per_epoch = len(data.train) // batch
    return {
        "arch": state.arch,
        "batch": batch,
        "steps_per_round": steps,
        "reference_img_s": statistics.median(ref),
        "dlpipe_img_s": statistics.median(ours),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "eval_seconds_per_epoch": statistics.median(evals),
        "eval_share_of_epoch": statistics.median(evals)
        / (statistics.median(evals) + steps_per_epoch * batch / statistics.median(ours)),
    }


def quality(epochs: int, record: str | None) -> dict:
    """A default `dlpipe gan train --data mnist5k` run (or an existing run's recorded results)."""
    from dlpipe.config import GanConfig
    from dlpipe.runs import RunDir
    from dlpipe.train.gan import train_gan

    if record:
        run = RunDir(Path(record))
        result = json.loads((run.path / "results.json").read_text())
        config = run.read_config()
    else:
        run = RunDir(Path("/tmp/dlpipe-bench-gan-quality"))
        shutil.rmtree(run.path, ignore_errors=True)
        (run.path / "checkpoints").mkdir(parents=True)
        config = {"data": "mnist5k", "epochs": epochs}
        result = train_gan(GanConfig(**config), run)
    shutil.copy(run.path / "samples.png", RESULTS / "gan_mnist5k_samples.png")
    shutil.copy(run.path / "progress.png", RESULTS / "gan_mnist5k_progress.png")
    m = result["metrics"]
    keys = ("epochs", "wall_seconds", "images_per_s", "fd_mobilenet_v2", "fd_mobilenet_v2_floor",
            "kid_mobilenet_v2", "kid_mobilenet_v2_floor", "bn_gap_before", "bn_recalibrated",
            "bn_gap_after", "loss_d", "loss_g", "d_x", "d_g_z")  # fmt: skip
    return {"config": config, "run_dir": str(run.path), **{k: m.get(k) for k in keys}}


def write(report: dict) -> None:
    """benchmarks/results/gan.json and gan.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    old = json.loads((RESULTS / "gan.json").read_text()) if (RESULTS / "gan.json").exists() else {}
    report = old | report
    (RESULTS / "gan.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# DCGAN benchmarks", "", f"Machine: {report.get('machine')}", ""]
    if "throughput" in report:
        t = report["throughput"]
        lines += [
            "## Training throughput (CPU), side by side",
            "",
            f"Architecture {t['arch']}, batch {t['batch']}, {t['steps_per_round']} steps per round, "
            f"median of {len(t['ratios'])} interleaved rounds.",
            "",
            "| loop | images/s |",
            "| --- | --- |",
            f"| pytorch/examples dcgan/main.py style | {t['reference_img_s']:.0f} |",
            f"| dlpipe (smoothing, EMA, NaN check, stats) | {t['dlpipe_img_s']:.0f} |",
            "",
            f"Ratio dlpipe / reference: **{t['ratio_median']:.2f}x** (per round: "
            f"{', '.join(f'{r:.2f}' for r in t['ratios'])}).",
            f"Per-epoch evaluation (BN check/recalibration + grid), not in the timed steps: "
            f"{t['eval_seconds_per_epoch']:.2f} s per epoch "
            f"({100 * t['eval_share_of_epoch']:.1f}% of an epoch).",
            "",
        ]
    if "quality" in report:
        q = report["quality"]
        lines += [
            "## Quality: mnist5k, 28x28, default settings",
            "",
            f"Config: {q['config']}",
            "",
            f"- wall time {q['wall_seconds']:.0f} s for {q['epochs']} epochs "
            f"(last epoch {q['images_per_s']:.0f} img/s; the machine was shared)",
            f"- fd_mobilenet_v2 **{q['fd_mobilenet_v2']:.1f}** vs real-vs-real floor "
            f"{q['fd_mobilenet_v2_floor']:.1f} (train vs held-out images, same count)",
            f"- kid_mobilenet_v2 {q['kid_mobilenet_v2']:.4f} vs floor {q['kid_mobilenet_v2_floor']:.4f}",
            f"- BatchNorm eval-vs-train gap {q['bn_gap_before']:.4f} -> {q['bn_gap_after']:.4f} "
            f"(recalibrated: {q['bn_recalibrated']})",
            "",
            "Samples of the exported (eval-mode) generator: `gan_mnist5k_samples.png`; fixed-noise "
            "progress over epochs: `gan_mnist5k_progress.png`.",
            "",
        ]
    (RESULTS / "gan.md").write_text("\n".join(lines))


def main() -> None:
    """Parse options, run, write results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--quality", action="store_true", help="also run the 20-epoch quality run")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--record", help="record the quality figures of an existing run folder")
    p.add_argument("--skip-throughput", action="store_true")
    a = p.parse_args()
    report: dict = {"machine": machine()}
    if not a.skip_throughput:
        report["throughput"] = throughput(a.rounds, a.steps, a.batch)
    if a.quality or a.record:
        report["quality"] = quality(a.epochs, a.record)
    write(report)
    print((RESULTS / "gan.md").read_text())


if __name__ == "__main__":
    main()
