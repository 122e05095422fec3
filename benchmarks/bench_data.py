"""Data at size: dlpipe's folder index + decoded cache against a plain torchvision ImageFolder +
DataLoader loop over the same generated JPEG folder, and the frozen feature pass ORT vs eager.

Writes a folder of N RGB JPEGs (256 px, 10 classes; not committed) under --folder, then measures,
each in a fresh process:
  open            dlpipe `open_source` cold (empty index cache) and warm (cached index); with
                  --open-n, also on that many tiny JPEGs (only headers matter for opening)
  first step      process start -> data ready -> one training step on a batch: cold (empty
                  decoded cache: the rows fill in the background while it trains) and warm,
                  vs the DataLoader loop's first batch
  memory          peak RSS (VmHWM, everything: file pages a process maps count too) and its
                  anonymous part (RssAnon)
  steady img/s    epoch 2 of reading shuffled batches of 64 uint8 rows -> float tensors: dlpipe's
                  pread reader and the DataLoader's epoch 2 (decode + resize every time,
                  --workers processes)
  features        mobilenet_v2 (offline ImageNet weights) at 96 px: onnxruntime vs torch eager
  cli             the real commands (`ae train`, `gan train`, an unfrozen `finetune`), each from
                  a cold decoded cache: time from process start to the first optimizer step,
                  steps done in --cli-seconds after it, and peak RSS

    .venv/bin/python benchmarks/bench_data.py [--n 5000] [--size 192] [--workers 2]
        [--parts open,cold,warm,baseline,features,cli] [--open-n 100000]
Writes benchmarks/results/data{--tag}.json; data.md holds the figures and what they mean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def make_folder(folder: Path, n: int) -> None:
    """N JPEGs in 10 class folders: smooth colour fields with noise (photo-like sizes)."""
    import numpy as np
    from PIL import Image

    if (folder / "done").exists() and int((folder / "done").read_text()) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 255.0
    noise = rng.normal(0, 20, (16, 256, 256, 3)).astype(np.float32)  # reused: generation is fast
    for i in range(n):
        c = i % 10
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        a, b = rng.random(2, dtype=np.float32)
        img = np.stack([xx * a, yy * b, (xx + yy) * (c / 18)], -1) * 200 + noise[i % 16]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            folder / f"class{c}" / f"{i:06d}.jpg", quality=90
        )
    (folder / "done").write_text(str(n))


_MEM = """
def mem():
    st = {k: v for k, v in (l.split(':', 1) for l in open('/proc/self/status'))}
    kb = lambda k: int(st[k].split()[0]) / 1024
    import resource
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {'peak_rss_mb': kb('VmHWM'), 'anon_mb': kb('RssAnon'), 'file_mb': kb('RssFile'),
            'worker_peak_mb': kids}
"""

DLPIPE = (
    _MEM
    + """
import sys, time, json
t0 = float(sys.argv[1])
import numpy as np
from dlpipe.console import quiet
from dlpipe.train.images import load_image_data
t_import = time.time() - t0
data = load_image_data(sys.argv[2], None, False, int(sys.argv[3]), 0.0, 0.0, 0, None, 0.0, 1.0,
                       quiet())
t_data = time.time() - t0
import torch
from torch import nn
net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
def step(x):
    loss = ((net(x) - x) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
step(torch.from_numpy(data.train[np.arange(64)]).float().div_(255))
t_step = time.time() - t0
rates = []
for epoch in range(2):
    order = np.random.default_rng(epoch).permutation(len(data.train))
    t = time.perf_counter()
    for s in range(0, len(order), 64):
        idx = np.sort(order[s:s + 64])
        x = torch.from_numpy(data.train[idx]).float().div_(255)
    rates.append(len(order) / (time.perf_counter() - t))
t_fill = None
if hasattr(data.train, "wait_committed"):  # cold: how long until the cache is committed
    data.train.wait_committed()
    t_fill = time.time() - t0
print(json.dumps({'import_s': t_import, 'data_ready_s': t_data, 'first_step_s': t_step,
                  'epoch1_img_s': rates[0], 'epoch2_img_s': rates[1], 'rows': len(data.train),
                  'committed_s': t_fill, 'reader': type(data.train).__name__, **mem()}))
"""
)

BASELINE = (
    _MEM
    + """
import sys, time, json
t0 = float(sys.argv[1])
import torch
from dlpipe.compat import import_torchvision
tv = import_torchvision()
size, workers = int(sys.argv[3]), int(sys.argv[4])
tf = tv.transforms.Compose([tv.transforms.Resize(size), tv.transforms.CenterCrop(size),
                            tv.transforms.PILToTensor()])
ds = tv.datasets.ImageFolder(sys.argv[2], transform=tf)
t_open = time.time() - t0
loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                                     )  # workers exit after each epoch: their peak RSS counts
rates, first = [], None
for epoch in range(2):
    t = time.perf_counter()
    for x, y in loader:
        x = x.float().div_(255)
        if first is None:
            first = time.time() - t0
    rates.append(len(ds) / (time.perf_counter() - t))
print(json.dumps({'open_s': t_open, 'first_step_s': first, 'epoch1_img_s': rates[0],
                  'epoch2_img_s': rates[1], **mem()}))
"""
)

OPEN = """
import sys, time, json
from dlpipe.data import open_source
t = time.perf_counter(); ds = open_source(sys.argv[2]); dt = time.perf_counter() - t
print(json.dumps({'open_s': dt, 'images': len(ds)}))
"""

FEATURES = """
import os, sys, time, json
import numpy as np
from dlpipe.data import Preprocess, open_source
from dlpipe.data.arrays import pixels_of
from dlpipe.metrics import features as mf
ds = open_source(sys.argv[2])
px = pixels_of(ds, np.arange(int(sys.argv[3])), Preprocess(resize=96, crop=96, channels=3))
x = px.astype(np.float32) / 255
out = {}
for engine in ("torch", "onnxruntime"):
    os.environ["DLPIPE_FEATURE_ENGINE"] = engine
    mf.extract(x[:8], size=96, batch=128)  # warm-up (and the one-off export for onnxruntime)
    best = 0.0
    for _ in range(2):
        t = time.perf_counter(); f = mf.extract(x, size=96, batch=128)
        best = max(best, len(x) / (time.perf_counter() - t))
    out[engine] = best
    out[engine + "_features"] = f
diff = float(np.abs(out.pop("torch_features") - out.pop("onnxruntime_features")).max())
print(json.dumps({**out, "speedup": out["onnxruntime"] / out["torch"], "max_abs_diff": diff}))
"""


CLI = (
    _MEM
    + """
import os, sys, time, json
t0, budget, argv = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
import torch
steps = []
def report():
    print(json.dumps({'first_step_s': steps[0] if steps else None, 'steps': len(steps),
                      'seconds': time.time() - t0, **mem()}), flush=True)
def hook(opt, args, kwargs):  # every optimizer step of the real command
    steps.append(time.time() - t0)
    if steps[-1] - steps[0] > budget:
        report()
        os._exit(0)
from torch.optim.optimizer import register_optimizer_step_post_hook
register_optimizer_step_post_hook(hook)
from dlpipe.cli import main
sys.argv = ["dlpipe", *argv]
try:
    main()
finally:
    report()
"""
)


def commands(folder: Path, size: int, runs: Path, batch: int | None) -> dict[str, list[str]]:
    """The issue's "done when" commands on the generated folder (one epoch; stopped by the
    wrapper --cli-seconds after the first optimizer step), at their default batch sizes (the
    finetune at 32) unless `batch` is given: activations at 192 px, not data, set their peak
    memory."""
    common = ["--data", str(folder), "--image-size", str(size), "--epochs", "1"]
    argv = {
        "ae": ["ae", "train", *common, "--name", "bench-ae", "--runs-dir", str(runs)],
        "gan": ["gan", "train", *common, "--name", "bench-gan", "--runs-dir", str(runs)],
        "finetune_unfrozen": ["finetune", *common, "--no-freeze", "--backbone", "mobilenet_v2",
                              "--weights", "none", "--batch-size", "32", "--name", "bench-ft",
                              "--runs-dir", str(runs)],
    }  # fmt: skip
    if batch:  # the last --batch-size wins
        return {k: [*v, "--batch-size", str(batch)] for k, v in argv.items()}
    return argv


def child(code: str, *args: object, cache: Path, threads: int | None = None) -> dict:
    """Run `code` in a fresh interpreter (dlpipe from this checkout) and parse its JSON line."""
    env = {**os.environ, "DLPIPE_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT / "src")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", textwrap.dedent(code), str(time.time()), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def make_tiny(folder: Path, n: int) -> None:
    """N tiny (8x8) JPEGs in 100 class folders: opening a folder reads headers, not pixels."""
    import numpy as np
    from PIL import Image

    if (folder / "done").exists() and int((folder / "done").read_text()) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    buf = __import__("io").BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, format="JPEG")
    blob = buf.getvalue()
    for i in range(n):
        sub = folder / f"class{i % 100:02d}"
        if i < 100:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:06d}.jpg").write_bytes(blob)
    (folder / "done").write_text(str(n))


PARTS = ("open", "cold", "warm", "baseline", "features", "cli")


def measure(args: argparse.Namespace, folder: Path, cache: Path, parts: set[str]) -> dict:
    """The parts asked for, each in a fresh process, in the order that needs no rebuild."""
    res: dict = {}
    if "open" in parts:
        res["open_cold"] = child(OPEN, folder, cache=cache)
        res["open_warm"] = child(OPEN, folder, cache=cache)
    if "cold" in parts:
        res["dlpipe_cold"] = child(DLPIPE, folder, args.size, cache=cache)
    if "warm" in parts:
        res["dlpipe_warm"] = child(DLPIPE, folder, args.size, cache=cache)
    if "baseline" in parts:
        res["baseline"] = child(BASELINE, folder, args.size, args.workers, cache=cache)
    if "features" in parts:
        res["features"] = child(FEATURES, folder, args.features, cache=cache)
    if "cli" in parts:  # the real commands, each from a cold decoded cache
        for name, argv in commands(
            folder, args.size, args.runs or args.folder / "runs", args.cli_batch
        ).items():
            shutil.rmtree(cache / "pixels", ignore_errors=True)
            res[f"cli_{name}"] = {"argv": argv, **child(CLI, args.cli_seconds, *argv, cache=cache)}
    if args.open_n:
        tiny, tiny_cache = args.folder / f"tiny{args.open_n}", args.folder / "cache-tiny"
        make_tiny(tiny, args.open_n)
        shutil.rmtree(tiny_cache, ignore_errors=True)
        res[f"open_cold_{args.open_n}"] = child(OPEN, tiny, cache=tiny_cache)
        res[f"open_warm_{args.open_n}"] = child(OPEN, tiny, cache=tiny_cache)
    return res


def main() -> None:
    """Generate the folder, measure, write data.md/data.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--features", type=int, default=512, help="images for the feature pass")
    ap.add_argument("--folder", type=Path, default=Path("/tmp/dlpipe-bench-data"))
    ap.add_argument("--tag", default="", help="suffix of the results file (data{tag}.json)")
    ap.add_argument("--parts", default=",".join(PARTS), help="which measurements, comma-separated")
    ap.add_argument("--open-n", type=int, default=0, help="also open this many tiny JPEGs")
    ap.add_argument(
        "--cli-seconds",
        type=float,
        default=60.0,
        help="cli part: how long each command trains after its first step",
    )
    ap.add_argument("--cli-batch", type=int, help="cli part: --batch-size of every command")
    ap.add_argument("--runs", type=Path, help="cli part: runs folder [default: FOLDER/runs]")
    args = ap.parse_args()
    folder = args.folder / f"jpeg{args.n}"
    cache = args.folder / f"cache{args.n}"
    t = time.perf_counter()
    make_folder(folder, args.n)
    made = time.perf_counter() - t
    shutil.rmtree(cache, ignore_errors=True)
    subprocess.run(["sync"], check=False)
    res: dict = {"n": args.n, "size": args.size, "workers": args.workers, "generate_s": made,
                 "loadavg_at_start": os.getloadavg()}  # fmt: skip
    res |= measure(args, folder, cache, set(args.parts.split(",")))
    res["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"data{args.tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def machine() -> dict:
    """What ran it (the load average says how shared the machine was)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_end": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
