"""dlpipe's default recipes side by side with the short scripts a user would otherwise write.

Same data, same split, same budget, in one run, on mnist5k, fashion-mnist and digits:
  denoising (gaussian:0.3)  dlpipe `ae train --noise` defaults   vs  a hand-written 2-level U-Net
                            (width 16, residual output, Adam 1e-3), scored by the same PSNR code on
                            the same held-out images with the same seeded noise
  frozen head               dlpipe `finetune` defaults (mobilenet_v2, --head-fit auto) and the old
                            --head-fit epochs  vs  a hand L-BFGS probe: torchvision mobilenet_v2
                            features computed here, scikit-learn LogisticRegression on standardised
                            features, C chosen on the validation split
  staged unfreeze           dlpipe `finetune --unfreeze-after K` defaults vs the frozen head above
The hand baselines import from dlpipe only the split (so the rows are the same) and the scoring.

    .venv/bin/python benchmarks/bench_quality.py [--sets mnist5k,fashion-mnist,digits]
        [--ae-epochs 6] [--ae-limit 1500] [--limit 1500] [--eval-limit 500] [--epochs 8]
Writes benchmarks/results/quality.md and quality.json. Run it alone: on a shared 2-core machine
other processes make torch several times slower (wall times then mean little; ratios less).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

NOISE = "gaussian:0.3"
SEED = 0


# ---- denoising ----------------------------------------------------------------------------------
def dlpipe_denoiser(data: str, epochs: int, limit: int, val_fraction: float, runs: Path) -> dict:
    """`dlpipe ae train --noise gaussian:0.3` with its defaults (the U-Net)."""
    from dlpipe.config import AeConfig
    from dlpipe.train.ae import train_autoencoder

    cfg = AeConfig(data=data, noise=NOISE, epochs=epochs, limit=limit, val_fraction=val_fraction,
                   seed=SEED, device="cpu")  # fmt: skip
    t0 = time.perf_counter()
    m = train_autoencoder(cfg, runs / f"ae-{data}")["metrics"]
    return {"value": m["psnr_gain_db"], "psnr_db": m["psnr_db"], "noisy_psnr_db": m["noisy_psnr_db"],
            "wall_s": time.perf_counter() - t0, "arch": cfg.net}  # fmt: skip


def hand_unet(channels: int, width: int = 16) -> Any:
    """The 2-level U-Net a user would write: skips, residual output."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.ReLU())  # fmt: skip

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.e1, self.e2, self.mid = block(channels, w), block(w, 2 * w), block(2 * w, 4 * w)
            self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
            self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), block(2 * w, w)
            self.out = nn.Conv2d(w, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e1 = self.e1(x)
            e2 = self.e2(nn.functional.max_pool2d(e1, 2))
            m = self.mid(nn.functional.max_pool2d(e2, 2))
            d2 = self.d2(torch.cat([e2, self.u2(m)], 1))
            d1 = self.d1(torch.cat([e1, self.u1(d2)], 1))
            return (x + self.out(d1)).clamp(0, 1) if not self.training else x + self.out(d1)

    return UNet()


def hand_denoiser(data: str, epochs: int, limit: int, val_fraction: float) -> dict:
    """Train the hand U-Net on the same training images, score it like dlpipe scores its own."""
    import torch

    from dlpipe.console import quiet
    from dlpipe.train.ae.parts import add_noise, evaluate, parse_noise
    from dlpipe.train.images import load_image_data

    t0 = time.perf_counter()
    d = load_image_data(data, None, False, None, val_fraction, 0.1, SEED, limit, 0.0, 1.0, quiet())
    torch.manual_seed(SEED)
    model, noise = hand_unet(d.channels), parse_noise(NOISE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clean_all = torch.from_numpy(d.train).float() / 255.0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(clean_all)).split(64):
            clean = clean_all[idx]
            loss = torch.nn.functional.mse_loss(model(add_noise(clean, noise)), clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
    m = evaluate(model, d.heldout, noise, "cpu", seed=SEED + 2)  # dlpipe's held-out noise seed
    return {"value": m["psnr_gain_db"], "psnr_db": m["psnr_db"],
            "noisy_psnr_db": m["noisy_psnr_db"], "wall_s": time.perf_counter() - t0}  # fmt: skip


# ---- classification -----------------------------------------------------------------------------
def dlpipe_finetune(data: str, runs: Path, name: str, **kw: Any) -> dict:
    """`dlpipe finetune` with its defaults plus `kw`."""
    from dlpipe.config import FinetuneConfig
    from dlpipe.train.classifier import run_finetune

    cfg = FinetuneConfig(data=data, seed=SEED, device="cpu", **kw)
    t0 = time.perf_counter()
    m = run_finetune(cfg, runs / f"{name}-{data}")["metrics"]
    keep = ("best_val_acc", "head_fit", "unfreeze", "feature_cache")
    return {"value": m["held_out_acc"], "wall_s": time.perf_counter() - t0,
            **{k: m[k] for k in keep if k in m}}  # fmt: skip


def hand_probe(data: str, image_size: int, limit: int, eval_limit: int) -> dict:
    """mobilenet_v2 features (computed here), LogisticRegression with C chosen on validation."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from dlpipe.compat import import_torchvision
    from dlpipe.data import make_split, open_source
    from dlpipe.data.splits import subsample
    from dlpipe.weights import resolve_torchvision

    t0 = time.perf_counter()
    tv = import_torchvision()
    ds = open_source(data)  # the same rows as dlpipe's run: same split and subsampling calls
    split = make_split(ds.labels, 0.1, 0.1, SEED, ds.official_test)
    rows = {"train": subsample(ds.labels, split.train, limit, SEED),
            "val": subsample(ds.labels, split.val, eval_limit, SEED),
            "test": subsample(ds.labels, split.test, eval_limit, SEED)}  # fmt: skip
    net = tv.models.mobilenet_v2()
    net.load_state_dict(resolve_torchvision("mobilenet_v2", "DEFAULT").state_dict)
    net.classifier = torch.nn.Identity()
    net.eval()
    tf = tv.transforms
    prep = tf.Compose([tf.Resize((image_size, image_size)), tf.ToTensor(),
                       tf.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip

    def feats(idx: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(idx), 128):
                x = torch.stack([prep(ds.image(int(i)).convert("RGB")) for i in idx[s : s + 128]])
                out.append(net(x).numpy())
        return np.concatenate(out)

    x = {k: feats(v) for k, v in rows.items()}
    y = {k: ds.labels[v] for k, v in rows.items()}
    scale = StandardScaler().fit(x["train"])
    x = {k: scale.transform(v) for k, v in x.items()}
    best = (-1.0, None)
    with threadpool_limits(1):  # small problems: BLAS threads only spin on a busy machine
        for c in (0.001, 0.01, 0.1, 1.0, 10.0):
            clf = LogisticRegression(C=c, max_iter=1000).fit(x["train"], y["train"])
            acc = clf.score(x["val"], y["val"])
            best = max(best, (acc, clf), key=lambda t: t[0])
    clf = best[1]
    return {"value": float(clf.score(x["test"], y["test"])), "best_val_acc": best[0],
            "C": clf.C, "wall_s": time.perf_counter() - t0}  # fmt: skip


# ---- the run ------------------------------------------------------------------------------------
def run_set(data: str, a: argparse.Namespace, runs: Path) -> list[dict]:
    """Every row of one data set."""
    val_fraction = 0.02 if data == "fashion-mnist" else 0.1  # 1,200 val images, not 6,000
    rows = []

    def add(task: str, method: str, metric: str, res: dict) -> None:
        rows.append({"data": data, "task": task, "method": method, "metric": metric, **res})
        print(f"{data:14s} {task:10s} {method:38s} {metric} {res['value']:.4f} "
              f"({res['wall_s']:.0f} s)", flush=True)  # fmt: skip

    ae = (a.ae_epochs, a.ae_limit, val_fraction)
    add("denoise", "dlpipe ae train --noise (defaults)", "PSNR gain dB",
        dlpipe_denoiser(data, *ae, runs))  # fmt: skip
    add("denoise", "hand 2-level U-Net", "PSNR gain dB", hand_denoiser(data, *ae))
    ft = {"backbone": "mobilenet_v2", "image_size": a.image_size, "limit": a.limit,
          "eval_limit": a.eval_limit, "epochs": a.epochs}  # fmt: skip
    add("frozen", "dlpipe finetune (defaults: head fit)", "held-out acc",
        dlpipe_finetune(data, runs, "auto", **ft))  # fmt: skip
    add("frozen", "dlpipe finetune --head-fit epochs", "held-out acc",
        dlpipe_finetune(data, runs, "epochs", head_fit="epochs", **ft))  # fmt: skip
    add("frozen", "hand L-BFGS probe (sklearn)", "held-out acc",
        hand_probe(data, a.image_size, a.limit, a.eval_limit))  # fmt: skip
    if a.unfrozen_epochs:
        staged = {**ft, "epochs": a.unfreeze_after + a.unfrozen_epochs,
                  "unfreeze_after": a.unfreeze_after}  # fmt: skip
        add("staged", f"dlpipe finetune --unfreeze-after {a.unfreeze_after}", "held-out acc",
            dlpipe_finetune(data, runs, "staged", **staged))  # fmt: skip
    return rows


def machine() -> str:
    """What ran the benchmark, and how busy it was."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; load average at start "
            f"{load:.1f}")  # fmt: skip


def write(rows: list[dict], a: argparse.Namespace, where: str, seconds: float) -> None:
    """quality.md (one table) and quality.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({"args": vars(a), "machine": where,
                                                      "rows": rows}, indent=1, default=str))  # fmt: skip
    lines = [
        "# Quality: dlpipe defaults vs hand-written baselines",
        "",
        f"`python benchmarks/bench_quality.py {' '.join(sys.argv[1:])}` - {seconds / 60:.1f} min.",
        f"Machine: {where}.",
        "",
        f"Budget: denoising {a.ae_epochs} epochs on {a.ae_limit} training images (gaussian 0.3); "
        f"classification mobilenet_v2 at {a.image_size} px on {a.limit} training images, "
        f"{a.eval_limit} validation / held-out, {a.epochs} epochs; staged: "
        f"{a.unfreeze_after} frozen + {a.unfrozen_epochs} unfrozen epochs. Same split per set.",
        "",
        "| data | task | method | metric | value | wall s | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        notes = "; ".join(str(r[k]) for k in ("arch", "head_fit", "unfreeze", "C") if k in r)
        if "C" in r:
            notes = f"C {r['C']} chosen on val"
        lines.append(f"| {r['data']} | {r['task']} | {r['method']} | {r['metric']} | "
                     f"{r['value']:.4f} | {r['wall_s']:.0f} | {notes} |")  # fmt: skip
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Parse options, run every set, write the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="mnist5k,fashion-mnist,digits")
    p.add_argument("--ae-epochs", type=int, default=6)
    p.add_argument("--ae-limit", type=int, default=1500)
    p.add_argument("--limit", type=int, default=1500)
    p.add_argument("--eval-limit", type=int, default=500)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--unfreeze-after", type=int, default=3)
    p.add_argument("--unfrozen-epochs", type=int, default=2, help="0: no staged run")
    a = p.parse_args()
    where, t0 = machine(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DLPIPE_CACHE_DIR"] = str(Path(tmp) / "cache")  # features computed afresh
        rows = [r for data in a.sets.split(",") for r in run_set(data, a, Path(tmp) / "runs")]
    write(rows, a, where, time.perf_counter() - t0)
    print(f"wrote {RESULTS / 'quality.md'}")


if __name__ == "__main__":
    main()
