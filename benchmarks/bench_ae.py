"""Denoising autoencoder quality on Fashion-MNIST (gaussian:0.3) against baselines, one process.

On the official 10k test images, with the same seeded noise for every method:
  noisy input            (the baseline the gain is measured against; target: AE gain >= +8 dB)
  Gaussian blur          (a classical denoiser: the best sigma of 0.5/0.8/1.0/1.5 on the test set,
                          which flatters it)
  dlpipe ae train        (`train_autoencoder` with `--noise gaussian:0.3`)
Also the quickstart setting (mnist5k, defaults) when --quickstart is given.

    .venv/bin/python benchmarks/bench_ae.py [--epochs 5] [--limit 20000] [--quickstart]
Writes benchmarks/results/ae.md and ae.json (+ ae_fashion_reconstructions.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def blur_baseline(run_dir: Path) -> dict:
    """PSNR/SSIM of a Gaussian blur of the same noisy test images the AE was measured on."""
    import numpy as np
    import torch
    from scipy.ndimage import gaussian_filter

    from dlpipe.config import AeConfig
    from dlpipe.console import quiet as Quiet
    from dlpipe.metrics import psnr, ssim
    from dlpipe.noise import add_noise, parse_noise
    from dlpipe.runs import RunDir
    from dlpipe.train.images import load_image_data

    cfg = AeConfig(**RunDir(run_dir).read_config())
    data = load_image_data(
        cfg.data, cfg.data_root, False, cfg.image_size, cfg.val_fraction,
        cfg.test_fraction, cfg.seed, cfg.limit, 0.0, 1.0, Quiet(),
    )  # fmt: skip
    clean = torch.from_numpy(data.heldout).float() / 255.0
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # the seed `final_outputs` evaluates with
    noisy = torch.cat(
        [
            add_noise(clean[s : s + 256], parse_noise(cfg.noise), gen)
            for s in range(0, len(clean), 256)
        ]
    ).numpy()
    c = clean.numpy()
    best = {}
    for sigma in (0.5, 0.8, 1.0, 1.5):
        den = gaussian_filter(noisy, sigma=(0, 0, sigma, sigma))
        p = float(np.mean(psnr(den, c)))
        if p > best.get("psnr_db", -1):
            best = {"sigma": sigma, "psnr_db": p, "ssim": float(np.mean(ssim(den, c)))}
    return best


def run_ae(name: str, **config: object) -> dict:
    """Train one autoencoder with `config` into a scratch run folder; returns its result."""
    from dlpipe.cli.common import Output
    from dlpipe.config import AeConfig
    from dlpipe.runs import RunDir
    from dlpipe.train.ae import train_autoencoder

    run = RunDir(Path(f"/tmp/dlpipe-bench-ae-{name}"))
    shutil.rmtree(run.path, ignore_errors=True)
    (run.path / "checkpoints").mkdir(parents=True)
    t0 = time.perf_counter()
    result = train_autoencoder(AeConfig(**config), run, Output(json_mode=True))
    result["wall_seconds"] = time.perf_counter() - t0
    result["config"] = config
    return result


def write(report: dict) -> None:
    """ae.json and ae.md."""
    old = json.loads((RESULTS / "ae.json").read_text()) if (RESULTS / "ae.json").exists() else {}
    report = old | report
    (RESULTS / "ae.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = ["# Denoising autoencoder benchmarks", "", f"Machine: {report['machine']}", ""]
    for key, title in (("fashion", "Fashion-MNIST, gaussian:0.3, official test set"),
                       ("quickstart", "Quickstart: mnist5k, gaussian:0.3, defaults")):  # fmt: skip
        if key not in report:
            continue
        r = report[key]
        m = r["metrics"]
        lines += [
            f"## {title}",
            "",
            f"Config: {r['config']}; wall time {r['wall_seconds']:.0f} s; "
            f"{m['heldout_images']} held-out images.",
            "",
            "| method | PSNR (dB) | SSIM | gain over noisy (dB) |",
            "| --- | --- | --- | --- |",
            f"| noisy input | {m['noisy_psnr_db']:.2f} | {m['noisy_ssim']:.3f} | 0 |",
        ]
        if "blur" in r:
            b = r["blur"]
            gain = b["psnr_db"] - m["noisy_psnr_db"]
            lines.append(
                f"| Gaussian blur (best sigma {b['sigma']}) | {b['psnr_db']:.2f} | {b['ssim']:.3f} | {gain:+.2f} |"
            )
        lines += [
            f"| dlpipe denoising AE | {m['psnr_db']:.2f} | {m['ssim']:.3f} | **{m['psnr_gain_db']:+.2f}** |",
            "",
        ]
    (RESULTS / "ae.md").write_text("\n".join(lines))


def main() -> None:
    """Parse options, run, write results."""
    from bench_gan import machine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit", type=int, default=20000, help="training images (of 54k)")
    p.add_argument("--quickstart", action="store_true")
    p.add_argument("--skip-fashion", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)  # on a shared, oversubscribed machine 1 thread is faster
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine()}
    if not a.skip_fashion:
        r = run_ae("fashion", data="fashion-mnist", noise="gaussian:0.3", epochs=a.epochs,
                   limit=a.limit)  # fmt: skip
        r["blur"] = blur_baseline(Path(r["run_dir"]))
        shutil.copy(r["artifacts"]["reconstructions"], RESULTS / "ae_fashion_reconstructions.png")
        report["fashion"] = r
    if a.quickstart:
        report["quickstart"] = run_ae("quickstart", data="mnist5k", noise="gaussian:0.3")
    write(report)
    print((RESULTS / "ae.md").read_text())


if __name__ == "__main__":
    main()
