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
  DCGAN                     dlpipe `gan train` defaults  vs  the pytorch/examples dcgan loop written
                            here (G nz-256-128-C at 28 px, D C-64-128-1, BCE, real label 0.9, Adam
                            2e-4 / 0.5, batch 64, no EMA) given the same process CPU seconds:
                            dlpipe's run is resumed in pieces and the hand loop catches up after
                            each, so both see the same machine load; scored by dlpipe's
                            fd_mobilenet_v2 / KID on the same held-out images
The hand baselines import from dlpipe only the split (so the rows are the same) and the scoring.

    .venv/bin/python benchmarks/bench_quality.py [--sets mnist5k,fashion-mnist,digits]
        [--only ae,finetune,gan] [--ae-epochs 15] [--ae-limit 1500] [--limit 1500]
        [--eval-limit 500] [--epochs 8] [--unfrozen-epochs 3] [--gan-limit 5000] [--gan-chunks 4]
        [--resplits 20] [--seed 0 --results DIR]
Writes benchmarks/results/quality.md and quality.json; `--only` reruns some parts and keeps the
other parts' rows (and the text under the table). Run it alone: on a shared 2-core machine
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
SEED = 0  # --seed: the split, the initialisations and the noise of every method


# ---- denoising ----------------------------------------------------------------------------------
def dlpipe_denoiser(data: str, epochs: int, limit: int, val_fraction: float, runs: Path) -> dict:
    """`dlpipe ae train --noise gaussian:0.3` with its defaults (the U-Net)."""
    from dlpipe.config import AeConfig
    from dlpipe.train.ae import train_autoencoder

    cfg = AeConfig(data=data, noise=NOISE, epochs=epochs, limit=limit, val_fraction=val_fraction,
                   seed=SEED, device="cpu")  # fmt: skip
    r = cfg.resolved()
    t0 = time.perf_counter()
    m = train_autoencoder(cfg, runs / f"ae-{data}")["metrics"]
    return {"value": m["psnr_gain_db"], "psnr_db": m["psnr_db"], "noisy_psnr_db": m["noisy_psnr_db"],
            "wall_s": time.perf_counter() - t0,
            "arch": f"{r.net} width {r.width}, batch {r.batch_size}"}  # fmt: skip


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
    from dlpipe.noise import add_noise, parse_noise
    from dlpipe.train.ae.parts import evaluate
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
    test_acc, val_acc, c = sklearn_probe(x, y)
    return {"value": test_acc, "best_val_acc": val_acc, "C": c,
            "wall_s": time.perf_counter() - t0, "features": (x, y)}  # fmt: skip


def sklearn_probe(x: dict, y: dict) -> tuple[float, float, float]:
    """The hand probe: LogisticRegression on features standardised on train, C (1 per decade)
    with the best validation accuracy; returns (held-out accuracy, validation accuracy, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scale = StandardScaler().fit(x["train"])
    x = {k: scale.transform(v) for k, v in x.items()}
    best = (-1.0, None)
    with threadpool_limits(1):  # small problems: BLAS threads only spin on a busy machine
        for c in (0.001, 0.01, 0.1, 1.0, 10.0):
            clf = LogisticRegression(C=c, max_iter=1000).fit(x["train"], y["train"])
            acc = clf.score(x["val"], y["val"])
            best = max(best, (acc, clf), key=lambda t: t[0])
    clf = best[1]
    return float(clf.score(x["test"], y["test"])), best[0], clf.C


class FeatureRows:
    """Cached features and labels, as `fit_linear_head` reads them from a run's Source."""

    def __init__(self, features: Any, labels: Any) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)


def resampled_heads(features: tuple[dict, dict], splits: int) -> tuple[dict, dict]:
    """dlpipe's head fit (`fit_linear_head`, the code `finetune --head-fit auto` runs) and the
    hand probe on `splits` random re-splits of the same pooled features (train / val / held-out
    sizes kept): one split's held-out set of 179-500 images moves either by a point at random,
    the mean over splits says which protocol is better. Returns (dlpipe, probe) rows."""
    import numpy as np
    import torch
    from torch import nn

    from dlpipe.train.classifier.headfit import fit_linear_head

    x, y = features
    sizes = {k: len(y[k]) for k in ("train", "val", "test")}
    xs, ys = np.concatenate([x[k] for k in sizes]), np.concatenate([y[k] for k in sizes])
    classes = int(ys.max()) + 1
    ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
    for rep in range(splits):
        order = np.random.default_rng(1000 + rep).permutation(len(ys))
        cut = np.cumsum([sizes["train"], sizes["val"]])
        part = dict(zip(sizes, np.split(order, cut), strict=True))
        xr, yr = {k: xs[v] for k, v in part.items()}, {k: ys[v] for k, v in part.items()}
        t0 = time.perf_counter()
        src = {k: FeatureRows(torch.from_numpy(xr[k]).float(), torch.from_numpy(yr[k]).long())
               for k in part}  # fmt: skip
        head = nn.Linear(xs.shape[1], classes)
        fit_linear_head(head, src["train"], src["val"], classes)
        with torch.no_grad():
            pred = head(src["test"].features).argmax(1)
        ours.append(float((pred == src["test"].labels).double().mean()))
        t1 = time.perf_counter()
        theirs.append(sklearn_probe(xr, yr)[0])
        t_ours, t_theirs = t_ours + t1 - t0, t_theirs + time.perf_counter() - t1
    diff = np.array(ours) - np.array(theirs)
    note = (f"mean of {splits} resampled splits ({sizes['train']} / {sizes['val']} / "
            f"{sizes['test']}); dlpipe - probe {diff.mean():+.4f} (sd {diff.std():.4f}, "
            f"min {diff.min():+.4f}, max {diff.max():+.4f})")  # fmt: skip
    return (
        {"value": float(np.mean(ours)), "wall_s": t_ours, "resampled": note},
        {"value": float(np.mean(theirs)), "wall_s": t_theirs, "resampled": note},
    )


# ---- DCGAN ---------------------------------------------------------------------------------------
def hand_dcgan(nz: int, c: int, side: int, ngf: int = 64, ndf: int = 64) -> tuple[Any, Any]:
    """pytorch/examples dcgan/main.py's G and D cut to the data's side: G nz-256-128-C at 28 px
    (ngf * 4, ngf * 2), D C-64-128-1 with a Sigmoid, BatchNorm but not at D's input,
    N(0, 0.02) init."""
    from torch import nn

    base, k = side, 0
    while base % 2 == 0 and base > 7:
        base, k = base // 2, k + 1
    gch = [ngf * 2 ** (k - i) for i in range(k)]
    g: list[nn.Module] = [nn.ConvTranspose2d(nz, gch[0], base, 1, 0, bias=False),
                          nn.BatchNorm2d(gch[0]), nn.ReLU(True)]  # fmt: skip
    for i, o in zip(gch, gch[1:], strict=False):
        g += [nn.ConvTranspose2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]
    g += [nn.ConvTranspose2d(gch[-1], c, 4, 2, 1, bias=False), nn.Tanh()]
    dch = [ndf * 2**i for i in range(k)]
    d: list[nn.Module] = [nn.Conv2d(c, dch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for i, o in zip(dch, dch[1:], strict=False):
        d += [nn.Conv2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.2, True)]
    d += [nn.Conv2d(dch[-1], 1, base, 1, 0, bias=False), nn.Sigmoid()]
    net_g, net_d = nn.Sequential(*g), nn.Sequential(*d)
    for m in [*net_g.modules(), *net_d.modules()]:
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return net_g, net_d


def hand_gan_steps(train: Any, nz: int, real_label: float) -> Any:
    """The pytorch/examples training loop as a generator of steps (BCE, Adam 2e-4 / 0.5, batch
    64, a DataLoader over normalised floats); yields G after each step, forever."""
    import torch

    torch.manual_seed(SEED)
    net_g, net_d = hand_dcgan(nz, train.shape[1], train.shape[2])
    crit = torch.nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    floats = torch.from_numpy(train).float() / 127.5 - 1.0
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(floats), batch_size=64, shuffle=True, drop_last=True
    )
    while True:
        for (real,) in loader:
            b = real.size(0)
            net_d.zero_grad()
            err_real = crit(net_d(real).view(-1), torch.full((b,), real_label))
            err_real.backward()
            fake = net_g(torch.randn(b, nz, 1, 1))
            err_fake = crit(net_d(fake.detach()).view(-1), torch.zeros(b))
            err_fake.backward()
            opt_d.step()
            net_g.zero_grad()
            err_g = crit(net_d(fake).view(-1), torch.ones(b))
            err_g.backward()
            opt_g.step()
            yield net_g


def gan_split(data: str, a: argparse.Namespace) -> Any:
    """The config of the dlpipe run and the same data it trains on (same split call)."""
    import dataclasses

    from dlpipe.config import GanConfig
    from dlpipe.console import quiet
    from dlpipe.train.images import load_image_data

    cfg = GanConfig(data=data, seed=SEED, device="cpu", fd_every=0, limit=a.gan_limit,
                    test_fraction=a.gan_test_fraction)  # fmt: skip
    if a.gan_epochs:  # a shorter check of the benchmark itself; the table wants the default
        cfg = dataclasses.replace(cfg, epochs=a.gan_epochs)
    d = load_image_data(data, None, False, None, cfg.val_fraction, cfg.test_fraction, SEED,
                        cfg.limit, 0.5, 0.5, quiet())  # fmt: skip
    return cfg, d


def clocks() -> tuple[float, float]:
    """(process CPU seconds, wall seconds) now."""
    return time.process_time(), time.perf_counter()


def gan_pair(data: str, a: argparse.Namespace, runs: Path) -> tuple[dict, dict]:
    """dlpipe `gan train` defaults vs the hand loop at equal CPU time: dlpipe's run goes in
    `gan_chunks` resumed pieces; after each, the hand loop trains until its CPU seconds catch up,
    so both see the same machine load. Both are scored by the same meter on the same images."""
    import dataclasses

    from dlpipe.train.gan import train_gan
    from dlpipe.train.gan.evaluate import QualityMeter

    cfg, d = gan_split(data, a)
    run, steps = runs / f"gan-{data}", hand_gan_steps(d.train, cfg.nz, a.gan_real_label)
    used = {"dlpipe": [0.0, 0.0], "hand": [0.0, 0.0], "hand_steps": 0}
    ends = sorted({round(cfg.epochs * (i + 1) / a.gan_chunks) for i in range(a.gan_chunks)})
    for i, end in enumerate(ends):
        (c0, w0) = clocks()
        result = train_gan(dataclasses.replace(cfg, epochs=end), run, resume=i > 0)
        (c1, w1) = clocks()
        used["dlpipe"] = [used["dlpipe"][0] + c1 - c0, used["dlpipe"][1] + w1 - w0]
        while used["hand"][0] < used["dlpipe"][0]:
            net_g = next(steps)
            (c2, w2) = clocks()
            used["hand"] = [used["hand"][0] + c2 - c1, used["hand"][1] + w2 - w1]
            used["hand_steps"] += 1
            (c1, w1) = (c2, w2)
    meter = QualityMeter(d.train, d.heldout, a.gan_fd_images, cfg.fd_image_size)
    ours = _score(meter, _exported_generator(result), cfg.nz)
    theirs = _score(meter, lambda z: net_g.train()(z.view(len(z), -1, 1, 1)), cfg.nz)
    epochs = used["hand_steps"] / (len(d.train) // 64)
    common = {"images": f"{len(d.train)} train / {meter.n} held-out", "px": d.image_size}
    return (
        {**ours, **common, "cpu_s": used["dlpipe"][0], "wall_s": used["dlpipe"][1],
         "budget": f"{cfg.epochs} epochs", "arch": result["arch"]},
        {**theirs, **common, "cpu_s": used["hand"][0], "wall_s": used["hand"][1],
         "budget": f"{epochs:.1f} epochs in the same CPU time"},
    )  # fmt: skip


def _exported_generator(result: dict) -> Any:
    """The generator dlpipe exports (eval mode, BatchNorm checked) from the run's checkpoint."""
    from dlpipe.checkpoint import load_checkpoint
    from dlpipe.models.dcgan import build_from_meta

    ck = load_checkpoint(result["artifacts"]["checkpoint"])
    g = build_from_meta(ck.meta)
    g.load_state_dict(ck.weights[ck.meta["export_group"]])
    result["arch"] = ck.meta["arch"]
    return g.eval()


def _score(meter: Any, g: Any, nz: int) -> dict:
    """fd/kid of the generator's samples against the held-out images, with the floor."""
    from dlpipe.train.gan.evaluate import FD_KEY, KID_KEY

    m = meter.measure(g, nz, "cpu")
    return {"value": m[FD_KEY], "kid": m[KID_KEY], "floor": m[FD_KEY + "_floor"],
            "kid_floor": m[KID_KEY + "_floor"]}  # fmt: skip


# ---- the run ------------------------------------------------------------------------------------
def run_set(data: str, a: argparse.Namespace, runs: Path) -> list[dict]:
    """Every row of one data set."""
    val_fraction = 0.02 if data == "fashion-mnist" else 0.1  # 1,200 val images, not 6,000
    rows = []

    def add(task: str, method: str, metric: str, res: dict) -> None:
        rows.append({"data": data, "task": task, "method": method, "metric": metric, **res})
        print(f"{data:14s} {task:10s} {method:38s} {metric} {res['value']:.4f} "
              f"({res['wall_s']:.0f} s)", flush=True)  # fmt: skip

    if "gan" in a.only:
        ours, theirs = gan_pair(data, a, runs)
        add("dcgan", "dlpipe gan train (defaults)", "fd_mobilenet_v2", ours)
        add("dcgan", "hand pytorch/examples DCGAN loop", "fd_mobilenet_v2", theirs)
    if "ae" in a.only:
        _ae_rows(data, a, runs, val_fraction, add)
    if "finetune" in a.only:
        _finetune_rows(data, a, runs, add)
    return rows


def _ae_rows(data: str, a: argparse.Namespace, runs: Path, val_fraction: float, add: Any) -> None:
    """The denoising rows of one data set."""
    ae = (a.ae_epochs, a.ae_limit, val_fraction)
    add("denoise", "dlpipe ae train --noise (defaults)", "PSNR gain dB",
        dlpipe_denoiser(data, *ae, runs))  # fmt: skip
    add("denoise", "hand 2-level U-Net", "PSNR gain dB", hand_denoiser(data, *ae))


def _finetune_rows(data: str, a: argparse.Namespace, runs: Path, add: Any) -> None:
    """The frozen-head and staged-unfreeze rows of one data set."""
    ft = {"backbone": "mobilenet_v2", "image_size": a.image_size, "limit": a.limit,
          "eval_limit": a.eval_limit, "epochs": a.epochs}  # fmt: skip
    add("frozen", "dlpipe finetune (defaults: head fit)", "held-out acc",
        dlpipe_finetune(data, runs, "auto", **ft))  # fmt: skip
    add("frozen", "dlpipe finetune --head-fit epochs", "held-out acc",
        dlpipe_finetune(data, runs, "epochs", head_fit="epochs", **ft))  # fmt: skip
    probe = hand_probe(data, a.image_size, a.limit, a.eval_limit)
    features = probe.pop("features")
    add("frozen", "hand L-BFGS probe (sklearn)", "held-out acc", probe)
    if a.resplits:
        ours, theirs = resampled_heads(features, a.resplits)
        add("resampled", "dlpipe head fit (fit_linear_head)", "mean held-out acc", ours)
        add("resampled", "hand L-BFGS probe (sklearn)", "mean held-out acc", theirs)
    if a.unfrozen_epochs:
        staged = {**ft, "epochs": a.unfreeze_after + a.unfrozen_epochs,
                  "unfreeze_after": a.unfreeze_after}  # fmt: skip
        add("staged", f"dlpipe finetune --unfreeze-after {a.unfreeze_after}", "held-out acc",
            dlpipe_finetune(data, runs, "staged", **staged))  # fmt: skip


def machine() -> str:
    """What ran the benchmark, and how busy it was."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; load average at start "
            f"{load:.1f}")  # fmt: skip


PARTS = ("ae", "finetune", "gan")
TASKS = {"finetune": ("frozen", "resampled", "staged"), "ae": ("denoise",), "gan": ("dcgan",)}


def budget(part: str, a: dict) -> str:
    """One line: what each method of a part was given."""
    if part == "ae":
        return (f"denoising {a['ae_epochs']} epochs on {a['ae_limit']} training images "
                "(gaussian 0.3)")  # fmt: skip
    if part == "finetune":
        return (f"classification mobilenet_v2 at {a['image_size']} px on {a['limit']} training "
                f"images, {a['eval_limit']} validation / held-out, {a['epochs']} epochs; staged: "
                f"{a['unfreeze_after']} frozen + {a['unfrozen_epochs']} unfrozen epochs")  # fmt: skip
    return (f"DCGAN: dlpipe `gan train` with its defaults (--fd-every 0: the benchmark scores "
            f"both), run in {a['gan_chunks']} resumed pieces; after each piece the hand loop "
            f"trains until its process CPU seconds reach dlpipe's (torch threads: {a['threads']}), "
            f"so both see the same machine load; training images capped at {a['gan_limit']}, "
            f"test fraction {a['gan_test_fraction']}; both scored by dlpipe's fd_mobilenet_v2 / "
            f"KID on the same {a['gan_fd_images']} (at most) held-out images, the hand G "
            "sampled in train mode as pytorch/examples does")  # fmt: skip


def _previous(results: Path) -> dict:
    """quality.json of earlier runs as {"parts": {part: header}, "rows": [...]}."""
    path = results / "quality.json"
    old = json.loads(path.read_text()) if path.exists() else {"parts": {}, "rows": []}
    if "parts" not in old:  # the format before per-part headers: one run of ae + finetune
        head = {k: old[k] for k in ("args", "machine", "minutes", "command") if k in old}
        old = {"parts": {"ae": head, "finetune": head}, "rows": old["rows"]}
    return old


def merge(rows: list[dict], a: argparse.Namespace, where: str, seconds: float) -> dict:
    """The results of this run in place of the same parts of earlier runs; the others kept."""
    old = _previous(Path(a.results))
    parts = dict(old["parts"])
    command = f"python benchmarks/bench_quality.py {' '.join(sys.argv[1:])}".strip()
    for part in a.only:
        parts[part] = {"args": vars(a), "machine": where, "minutes": seconds / 60,
                       "command": command}  # fmt: skip
    redone = {(r["data"], r["task"]) for r in rows}
    kept = [r for r in old["rows"] if (r["data"], r["task"]) not in redone]
    sets = list(dict.fromkeys([r["data"] for r in kept + rows]))
    order = [t for p in PARTS for t in TASKS[p]]
    merged = sorted(kept + rows, key=lambda r: (sets.index(r["data"]), order.index(r["task"])))
    return {"parts": parts, "rows": merged}


def _notes(r: dict) -> str:
    if "C" in r:
        return f"C {r['C']} chosen on val"
    if r["task"] == "dcgan":
        extra = f"; arch {r['arch']}" if "arch" in r else ""
        return (f"{r['budget']}; floor {r['floor']:.1f}; KID {r['kid']:.3f} (floor "
                f"{r['kid_floor']:.3f}); {r['images']} images at {r['px']} px{extra}")  # fmt: skip
    return "; ".join(str(r[k]) for k in ("arch", "head_fit", "unfreeze", "resampled") if k in r)


def write(rows: list[dict], a: argparse.Namespace, where: str, seconds: float) -> None:
    """quality.md (one table; the text under it is kept) and quality.json, merged with the
    parts of earlier runs that this run did not redo."""
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    report = merge(rows, a, where, seconds)
    (results / "quality.json").write_text(json.dumps(report, indent=1, default=str))
    lines = ["# Quality: dlpipe defaults vs hand-written baselines", ""]
    for part in PARTS:
        head = report["parts"].get(part)
        if head:
            minutes = f" - {head['minutes']:.1f} min" if "minutes" in head else ""
            lines += [f"**{part}**: `{head.get('command', 'python benchmarks/bench_quality.py')}`"
                      f"{minutes}. Machine: {head['machine']}. Budget: "
                      f"{budget(part, head['args'])}.", ""]  # fmt: skip
    lines += [
        "| data | task | method | metric | value | wall s | CPU s | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else "-"
        lines.append(f"| {r['data']} | {r['task']} | {r['method']} | {r['metric']} | "
                     f"{r['value']:.4f} | {r['wall_s']:.0f} | {cpu} | {_notes(r)} |")  # fmt: skip
    md = results / "quality.md"
    old = md.read_text().splitlines() if md.exists() else []
    last = max((i for i, line in enumerate(old) if line.startswith("|")), default=len(old))
    md.write_text("\n".join(lines + old[last + 1 :]) + "\n")


def main() -> None:
    """Parse options, run every set, write the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="mnist5k,fashion-mnist,digits")
    p.add_argument("--ae-epochs", type=int, default=15, help="issue 12's budget")
    p.add_argument("--ae-limit", type=int, default=1500)
    p.add_argument("--limit", type=int, default=1500)
    p.add_argument("--eval-limit", type=int, default=500)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--unfreeze-after", type=int, default=3)
    p.add_argument("--unfrozen-epochs", type=int, default=3, help="0: no staged run")
    p.add_argument(
        "--resplits",
        type=int,
        default=20,
        help="frozen head: also compare on N re-splits of the features (0: no)",
    )
    p.add_argument("--only", default=",".join(PARTS), help="parts to run: finetune,ae,gan")
    p.add_argument("--gan-epochs", type=int, help="dlpipe's epochs [default: its default]")
    p.add_argument("--gan-limit", type=int, default=5000, help="training images at most")
    p.add_argument("--gan-test-fraction", type=float, default=0.2, help="1,000 mnist5k digits")
    p.add_argument("--gan-fd-images", type=int, default=1000)
    p.add_argument("--gan-chunks", type=int, default=4, help="dlpipe run in this many pieces")
    p.add_argument("--gan-real-label", type=float, default=0.9, help="hand loop's real target")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--results", default=str(RESULTS), help="where quality.md/json are merged")
    p.add_argument("--seed", type=int, default=0,
                   help="another split and initialisation (write it to another --results)")  # fmt: skip
    a = p.parse_args()
    global SEED
    SEED = a.seed
    a.only = [x for x in a.only.split(",") if x]
    if set(a.only) - set(PARTS):
        p.error(f"--only takes {', '.join(PARTS)}")
    import torch

    torch.set_num_threads(a.threads)
    where, t0 = machine(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DLPIPE_CACHE_DIR"] = str(Path(tmp) / "cache")  # features computed afresh
        rows = [r for data in a.sets.split(",") for r in run_set(data, a, Path(tmp) / "runs")]
    write(rows, a, where, time.perf_counter() - t0)
    print(f"wrote {Path(a.results) / 'quality.md'}")


if __name__ == "__main__":
    main()
