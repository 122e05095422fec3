"""Scale-out: 1 vs N processes (DDP over torchrun) on CPU, and AMP vs fp32 on one GPU.

Processes (default): each training command runs through the real CLI, `--nproc 1` and `--nproc 2`
alternately for `--rounds` rounds (side by side in one invocation, so both see the same machine
load), with the same global batch and options. Figures: training images/s (from the run's
metrics.csv, rank 0's clock; the ranks meet in every all-reduce, so it is the job's pace) and the
command's wall time. On a 2-core machine two processes share the two cores that one process
already used with two threads: the honest expectation is no speed-up, and the figure shows what the
communication costs.

    .venv/bin/python benchmarks/bench_scaleout.py [--rounds 3] [--nproc 2]
    .venv/bin/python benchmarks/bench_scaleout.py --amp [--rounds 3]   # needs a CUDA device

`--amp`: on one GPU, images/s of `finetune --no-freeze` (resnet18 at 224 px on mnist5k, the slow
path) and of `gan train` (64 px) with `--amp off`, `bf16` and `fp16`, alternated the same way.
Writes benchmarks/results/scaleout_cpu.md / scaleout_amp.md (+ .json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_gan import machine  # noqa: E402

JOBS_CPU = {
    "gan train": ["gan", "train", "--data", "mnist5k", "--limit", "2048", "--epochs", "2",
                  "--batch-size", "64", "--fd-every", "0"],
    "ae train": ["ae", "train", "--data", "mnist5k", "--limit", "2048", "--epochs", "2",
                 "--batch-size", "64", "--noise", "gaussian:0.3"],
    "finetune (frozen, cached features)": [
        "finetune", "--backbone", "mobilenet_v2", "--data", "mnist5k", "--limit", "1024",
        "--eval-limit", "200", "--image-size", "64", "--epochs", "3"],
    "finetune (unfrozen, slow path)": [
        "finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--no-freeze",
        "--data", "mnist5k", "--limit", "2048", "--eval-limit", "200", "--epochs", "2"],
}  # fmt: skip
JOBS_AMP = {
    "finetune resnet18 224px (unfrozen)": [
        "finetune", "--backbone", "resnet18", "--no-freeze", "--data", "mnist5k", "--limit",
        "4096", "--eval-limit", "256", "--image-size", "224", "--epochs", "2", "--batch-size",
        "128"],
    "gan train 64px": ["gan", "train", "--data", "mnist5k", "--image-size", "64", "--epochs", "2",
                       "--batch-size", "128", "--fd-every", "0"],
}  # fmt: skip


def run_once(argv: list[str], extra: list[str], workdir: Path, tag: str) -> dict[str, float]:
    """One CLI run in a fresh run folder; wall seconds and training images/s of its epochs."""
    env = {**os.environ, "DLPIPE_CACHE_DIR": str(workdir / f"cache-{tag}"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dlpipe", *argv, *extra, "--runs-dir", str(workdir / "runs"),
           "--name", tag, "--json", "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(Path(result["run_dir"]) / "metrics.csv")))
    return {"wall_s": wall, "images_per_s": _images_per_s(rows, argv)}


def _images_per_s(rows: list[dict[str, str]], argv: list[str]) -> float:
    """Mean training images/s over the epochs (gan/ae log it; finetune logs seconds per epoch; on
    cached features those are head-only epochs, so there the wall time is the figure to read)."""
    if rows and rows[0].get("images_per_s"):
        return statistics.mean(float(r["images_per_s"]) for r in rows)
    limit = int(argv[argv.index("--limit") + 1])
    train = limit  # --limit caps the training images
    return statistics.mean(train / float(r["seconds"]) for r in rows)


def compare(
    jobs: dict[str, list[str]],
    variants: dict[str, list[str]],
    rounds: int,
    only: dict[str, set[str]] | None = None,
) -> dict:
    """Alternate the variants of each job for `rounds` rounds; medians per variant. `only` maps a
    variant to the jobs it applies to (default: all)."""
    table: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for job, argv in jobs.items():
            mine = {v: e for v, e in variants.items() if only is None or job in only.get(v, {job})}
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in mine}
            for r in range(rounds):
                for v, extra in mine.items():
                    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{job.split()[0]}-{v}-{r}")
                    runs[v].append(run_once(argv, extra, Path(tmp), tag))
                    print(f"{job} [{v}] round {r + 1}: {runs[v][-1]}", flush=True)
            table[job] = {
                v: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for v, xs in runs.items()
            }
    return table


def write(name: str, title: str, table: dict, base: str, note: str) -> None:
    """results/NAME.md (ratios against `base`) and NAME.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": machine(), "table": table}, indent=1)
    )
    lines = [f"# {title}", "", f"Machine: {machine()}", "", note, "",
             f"| job | variant | images/s (median) | wall s (median) | images/s vs {base} "
             f"| wall time vs {base} |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for job, variants in table.items():
        b = variants[base]
        for v, m in variants.items():
            speed, wall = m["images_per_s"] / b["images_per_s"], m["wall_s"] / b["wall_s"]
            lines.append(f"| {job} | {v} | {m['images_per_s']:.0f} | {m['wall_s']:.1f} | "
                         f"{speed:.2f}x | {wall:.2f}x |")  # fmt: skip
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="AMP vs fp32 on one GPU instead")
    args = ap.parse_args()
    if args.amp:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--amp needs a CUDA device; none is visible here.")
        variants = {f"amp {a}": ["--amp", a, "--device", "cuda"] for a in ("off", "bf16", "fp16")}
        table = compare(JOBS_AMP, variants, args.rounds)
        write("scaleout_amp", "AMP vs fp32 on one GPU", table, "amp off",
              "Same job, `--amp off|bf16|fp16` alternated; channels_last is on for CUDA in all.")  # fmt: skip
        return
    two = f"{args.nproc} processes"
    variants = {"1 process": ["--device", "cpu"],
                two: ["--device", "cpu", "--nproc", str(args.nproc)],
                two + ", --no-sync-bn": ["--device", "cpu", "--nproc", str(args.nproc),
                                         "--no-sync-bn"]}  # fmt: skip
    with_bn = {"gan train", "finetune (unfrozen, slow path)"}  # where BatchNorm sync costs
    table = compare(JOBS_CPU, variants, args.rounds, {two + ", --no-sync-bn": with_bn})
    write("scaleout_cpu", f"1 vs {args.nproc} processes (DDP, Gloo) on CPU", table, "1 process",
          "Same global batch and options; `--nproc N` launches torchrun with OMP_NUM_THREADS = "
          "cores / N. One process uses torch's default threads. Wall time includes torchrun's "
          "start (about 3-4 s here). `--no-sync-bn`: BatchNorm statistics per process instead of "
          "over the global batch (faster, no longer the 1-process result).")  # fmt: skip


if __name__ == "__main__":
    main()
