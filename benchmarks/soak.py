"""Soak test (not in CI): consecutive tiny pipelines (`dlpipe run`: ae train -> export), each one
SIGKILLed at a random moment, then re-run until it finishes; every finished run is verified.

Verified means: the final checkpoint loads (safetensors, no pickle) and holds the last epoch, the
metrics.csv has each epoch exactly once (a resumed run appended nothing twice), no temporary files
are left beside the checkpoint, and the ONNX file passes onnx.checker and runs in onnxruntime
with finite output. The baseline printed beside it is the uninterrupted wall time of one run.

    .venv/bin/python benchmarks/soak.py --runs 50            # the full soak (about 20 min here)
    .venv/bin/python benchmarks/soak.py --runs 8 --out benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 3
PIPELINE = f"""\
name: soak
runs_dir: runs
stages:
  - name: train
    command: ae train
    data: digits
    width: 4
    latent: 4
    batch_size: 16
    limit: 240
    epochs: {EPOCHS}
    device: cpu
    deterministic: true
  - name: export
    command: export
    args: ["${{train.run_dir}}"]
    out: soak.onnx
    force: true
"""


def _run(cwd: Path, kill_after: float | None) -> tuple[int, float]:
    """One `dlpipe run`; SIGKILL after `kill_after` seconds if it is still going."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlpipe", "run", "p.yaml", "--quiet"],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.perf_counter() - t0


def verify(cwd: Path) -> list[str]:
    """What is wrong with a finished run's outputs (empty: all good)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from dlpipe.checkpoint import load_checkpoint

    problems = []
    ck_path = cwd / "runs/ae/soak-train/checkpoints/last.safetensors"
    try:
        ck = load_checkpoint(ck_path)
        if ck.state.get("epoch") != EPOCHS:
            problems.append(f"checkpoint epoch {ck.state.get('epoch')} != {EPOCHS}")
    except Exception as exc:  # noqa: BLE001 - report, keep soaking
        problems.append(f"checkpoint: {exc}")
    rows = (cwd / "runs/ae/soak-train/metrics.csv").read_text().split()[1:]
    if [r.split(",")[0] for r in rows] != [str(e) for e in range(1, EPOCHS + 1)]:
        problems.append(f"metrics.csv epochs {[r.split(',')[0] for r in rows]}")
    stray = [p.name for p in ck_path.parent.iterdir() if p.name.endswith(".tmp")]
    if stray:
        problems.append(f"temporary files left: {stray}")
    try:
        onnx.checker.check_model(str(cwd / "soak.onnx"), full_check=True)
        sess = ort.InferenceSession(str(cwd / "soak.onnx"), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 2 for d in inp.shape]
        out = sess.run(None, {inp.name: np.random.rand(*shape).astype(np.float32)})[0]
        if not np.isfinite(out).all():
            problems.append("onnx output not finite")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"onnx: {exc}")
    return problems


def soak(runs: int, seed: int) -> dict:
    """Run the soak; returns the figures."""
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="dlpipe-soak-"))
    ref = base / "baseline"
    ref.mkdir()
    (ref / "p.yaml").write_text(PIPELINE)
    code, baseline_s = _run(ref, None)
    assert code == 0, "the uninterrupted baseline run failed"
    stats = {"runs": runs, "killed": 0, "survived": 0, "verified": 0, "reruns": 0, "failures": []}
    for i in range(runs):
        cwd = base / f"run{i:03d}"
        cwd.mkdir()
        (cwd / "p.yaml").write_text(PIPELINE)
        kill_at = rng.uniform(0.5, baseline_s)  # anywhere: import, data, an epoch, a write, export
        code, _ = _run(cwd, kill_at)
        stats["killed"] += code == -signal.SIGKILL
        for _attempt in range(3):  # re-run until it finishes (normally once)
            stats["reruns"] += 1
            code, _ = _run(cwd, None)
            if code == 0:
                break
        if code != 0:
            stats["failures"].append(f"run {i}: re-run exit {code} (killed at {kill_at:.1f} s)")
            continue
        stats["survived"] += 1
        problems = verify(cwd)
        stats["verified"] += not problems
        stats["failures"] += [f"run {i} (killed at {kill_at:.1f} s): {p}" for p in problems]
        print(
            f"run {i + 1}/{runs}: killed at {kill_at:.1f} s -> {'ok' if not problems else problems}"
        )
    stats["baseline_s"] = baseline_s
    return stats


def _machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, {cpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    """Parse options, soak, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown results file.")
    args = parser.parse_args()
    t0 = time.perf_counter()
    s = soak(args.runs, args.seed)
    wall = time.perf_counter() - t0
    lines = [
        "# Soak: tiny pipelines (ae train -> export) SIGKILLed at random, then re-run",
        "",
        f"Machine: {_machine()} (shared, loaded by other jobs).",
        f"Command: `.venv/bin/python benchmarks/soak.py --runs {args.runs} --seed {args.seed}`",
        "",
        "| runs | killed mid-run | survived (re-run finished) | outputs verified | re-runs | "
        "uninterrupted run (baseline) | soak wall time |",
        "|---|---|---|---|---|---|---|",
        f"| {s['runs']} | {s['killed']} | {s['survived']} | {s['verified']} | {s['reruns']} | "
        f"{s['baseline_s']:.1f} s | {wall:.0f} s |",
        "",
        "Failures: " + ("; ".join(s["failures"]) if s["failures"] else "none."),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
