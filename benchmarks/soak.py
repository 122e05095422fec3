"""Soak test (not in CI): consecutive tiny pipelines (`dlpipe run`: ae train -> export), each one
hit by a fault at a random moment, then re-run until it finishes; every finished run is verified.

Faults (--faults, comma list): `kill` (SIGKILL), `term` (SIGTERM: the run must save, print the
resume command and exit 143, never a traceback) and `full` (the run's folder is a small tmpfs
filled up to a random point: the run must exit 3 naming the file, never a traceback; the re-run
after freeing the space must finish). `full` needs root to mount a tmpfs and is skipped otherwise.
`vanish` and `garble` train on a folder of PNGs instead of a built-in set and, just after dlpipe
has read the folder's index (while it decodes the images), delete 30% of the files or overwrite
them with random bytes: the run must finish and list in skipped.txt only files that really were
deleted ("vanished since the data set was opened") or garbled ("changed since ..."), or stop with
a clear error (exit 2) - never a traceback.

Verified means: the final checkpoint loads (safetensors, no pickle) and holds the last epoch, the
metrics.csv has each epoch exactly once (a resumed run appended nothing twice), no temporary files
are left beside the checkpoint, and the ONNX file passes onnx.checker and runs in onnxruntime
with finite output. The baseline printed beside it is the uninterrupted wall time of one run.

    .venv/bin/python benchmarks/soak.py --runs 50            # the full soak (about 20 min here)
    .venv/bin/python benchmarks/soak.py --runs 8 --out benchmarks/results/soak.md
    .venv/bin/python benchmarks/soak.py --runs 6 --faults kill,term,full
    .venv/bin/python benchmarks/soak.py --runs 3 --faults vanish,garble
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
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


LAST_STDERR = {"text": ""}


def _start(cwd: Path) -> subprocess.Popen:
    """`dlpipe run p.yaml --quiet` in `cwd`, with its own cache folder there (the data faults
    watch its folder index appear, and no run reuses another's decoded pixels)."""
    env = {**_env(), "DLPIPE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "dlpipe", "run", "p.yaml", "--quiet"],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        text=True, env=env,
    )  # fmt: skip


def _env() -> dict[str, str]:
    """This environment with PYTHONPATH made absolute: the runs start in other folders, and a
    relative `PYTHONPATH=src` would silently test whichever dlpipe is installed instead."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in paths if p)}


def _run(cwd: Path, kill_after: float | None, sig: int = signal.SIGKILL) -> tuple[int, float]:
    """One `dlpipe run`; send `sig` after `kill_after` seconds if it is still going."""
    t0 = time.perf_counter()
    proc = _start(cwd)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, sig)
        _, err = proc.communicate()
    LAST_STDERR["text"] = err or ""
    return proc.returncode, time.perf_counter() - t0


def _fault_run(cwd: Path, fault: str, at: float, rng: random.Random, size: int) -> tuple[int, str]:
    """The faulty first run; returns (exit code, what was wrong with how it failed or '')."""
    if fault == "kill":
        code, _ = _run(cwd, at)
        return code, ""
    if fault == "term":
        code, _ = _run(cwd, at, signal.SIGTERM)
        err = LAST_STDERR["text"]
        wrong = f"traceback (exit {code}): {err[-1500:]}" if "Traceback" in err else ""
        if code not in (0, 143):
            wrong = wrong or f"exit {code} after SIGTERM"
        return code, wrong
    # full: leave a random amount of free space, smaller than a whole run needs
    filler = cwd / "filler"
    free = _free(cwd)
    keep = int(rng.uniform(0, size))
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * max(0, free - keep))
        except OSError:
            pass
    code, _ = _run(cwd, None)
    err = LAST_STDERR["text"]
    filler.unlink()
    wrong = "traceback" if "Traceback" in err else ""
    if code not in (0, 3):
        wrong = wrong or f"exit {code} on a full disk: {err[-300:]}"
    elif code == 3 and "No space left on device" not in err:
        wrong = f"exit 3 without saying the disk is full: {err[-300:]}"
    return code, wrong


SHARE = 0.3  # of the folder's images deleted or garbled by the data faults
_DONE = {"vanish": "deleted", "garble": "garbled"}
_LISTED = {"vanish": "vanished since the data set was opened",
           "garble": "changed since the data set was opened"}  # fmt: skip


def _data_fault_run(cwd: Path, fault: str, rng: random.Random) -> tuple[int, str, int, int]:
    """The first run, with SHARE of its images deleted (vanish) or overwritten with random bytes
    (garble) 0-0.2 s after dlpipe wrote the folder's index (it decodes the images next); returns
    (exit code, what was wrong, files hit, how many of them skipped.txt lists)."""
    files = sorted((cwd / "data").rglob("*.png"))
    hit = rng.sample(files, int(SHARE * len(files)))
    proc, index = _start(cwd), cwd / "cache" / "index"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not any(index.glob("*.json")):
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.2))
    for path in hit:
        if fault == "vanish":
            path.unlink()
        else:
            path.write_bytes(os.urandom(rng.randint(16, 512)))
    _, err = proc.communicate()
    LAST_STDERR["text"] = err or ""
    code = proc.returncode
    wrong = f"traceback (exit {code}): {err[-1500:]}" if "Traceback" in err else ""
    if code not in (0, 2) or (code == 2 and "error:" not in err):
        wrong = wrong or f"exit {code} with files {_DONE[fault]}: {err[-300:]}"
    listed = _listed(cwd / "runs/ae/soak-train/skipped.txt")
    names = {str(p.relative_to(cwd)) for p in hit}
    # a file garbled between its check and its decode is listed as corrupt: any reason will do
    # for a file that was hit, but an untouched file must never be reported vanished or changed
    false = sorted(f for f, why in listed if why in _LISTED.values() and f not in names)
    if false:
        wrong = wrong or f"skipped.txt says untouched files vanished or changed: {false[:3]}"
    return code, wrong, len(hit), sum(f in names for f, _ in listed)


def _listed(path: Path) -> list[tuple[str, str]]:
    """(file, reason) rows of a skipped.txt; none when there is no file."""
    import csv

    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [(row[0], row[1]) for row in list(csv.reader(fh, delimiter="\t"))[1:]]


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _tmpfs(path: Path, mib: int) -> bool:
    """Mount a tmpfs of `mib` MiB on `path` (root only); False when that is not possible."""
    path.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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


DATA_FAULTS = ("vanish", "garble")


def _prepare(cwd: Path, fault: str, source: Path | None) -> None:
    """p.yaml in `cwd`; for the data faults a fresh copy of the PNG folder (all of it read)."""
    if source is None:
        (cwd / "p.yaml").write_text(PIPELINE)
        return
    shutil.copytree(source, cwd / "data")
    (cwd / "p.yaml").write_text(
        PIPELINE.replace("data: digits", "data: data").replace("limit: 240", "limit: 800")
    )


def _png_folder(base: Path) -> Path:
    """1,000 real MNIST digits (28x28) as a folder of PNGs, written by `dlpipe data export`."""
    out = base / "data-src"
    cmd = [sys.executable, "-m", "dlpipe", "data", "export", "mnist5k", str(out), "--limit", "1000"]
    subprocess.run([*cmd, "--quiet"], check=True, capture_output=True, env=_env())
    return out


def soak(runs: int, seed: int, fault: str = "kill") -> dict:
    """Run the soak with one kind of fault; returns the figures."""
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="dlpipe-soak-"))
    source = _png_folder(base) if fault in DATA_FAULTS else None
    ref = base / "baseline"
    ref.mkdir()
    _prepare(ref, fault, source)
    code, baseline_s = _run(ref, None)
    assert code == 0, "the uninterrupted baseline run failed"
    size = _size(ref)
    stats = {"fault": fault, "runs": runs, "hit": 0, "survived": 0, "verified": 0, "reruns": 0,
             "failures": [], "files_hit": 0, "files_listed": 0}  # fmt: skip
    for i in range(runs):
        cwd = base / f"run{i:03d}"
        if fault == "full":
            if not _tmpfs(cwd, 64):
                stats["failures"].append("skipped: cannot mount a tmpfs here (needs root)")
                stats["runs"] = i
                break
        else:
            cwd.mkdir()
        _prepare(cwd, fault, source)
        at = rng.uniform(0.5, baseline_s)  # anywhere: import, data, an epoch, a write, export
        if fault in DATA_FAULTS:
            first, wrong, files, listed = _data_fault_run(cwd, fault, rng)
            stats["files_hit"] += files
            stats["files_listed"] += listed
        else:
            first, wrong = _fault_run(cwd, fault, at, rng, size)
        stats["hit"] += first != 0
        if wrong:
            stats["failures"].append(f"run {i}: {wrong}")
        for _attempt in range(3):  # re-run until it finishes (normally once)
            stats["reruns"] += 1
            code, _ = _run(cwd, None)
            if code == 0:
                break
        if code != 0:
            stats["failures"].append(f"run {i}: re-run exit {code} (fault at {at:.1f} s)")
        else:
            stats["survived"] += 1
            problems = verify(cwd)
            stats["verified"] += not problems
            stats["failures"] += [f"run {i} (fault at {at:.1f} s): {p}" for p in problems]
            print(f"{fault} {i + 1}/{runs}: first run exit {first} -> "
                  f"{'ok' if not problems else problems}")  # fmt: skip
        if fault == "full":
            subprocess.run(["umount", str(cwd)], capture_output=True)
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
    parser.add_argument("--faults", default="kill", help="Comma list of " + ", ".join(FAULTS) + ".")
    args = parser.parse_args()
    lines = [
        "# Soak: tiny pipelines (ae train -> export) hit by a fault at random, then re-run",
        "",
        f"Machine: {_machine()} (shared, loaded by other jobs).",
        f"Command: `.venv/bin/python benchmarks/soak.py --runs {args.runs} --seed {args.seed} "
        f"--faults {args.faults}`",
        "",
        "| fault | runs | first run stopped (exit != 0) | survived (re-run finished) | outputs "
        "verified | re-runs | uninterrupted run (baseline) | soak wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failures: list[str] = []
    notes: list[str] = []
    for fault in args.faults.split(","):
        t0 = time.perf_counter()
        s = soak(args.runs, args.seed, fault)
        wall = time.perf_counter() - t0
        lines.append(
            f"| {FAULTS[fault]} | {s['runs']} | {s['hit']} | {s['survived']} | {s['verified']} | "
            f"{s['reruns']} | {s['baseline_s']:.1f} s | {wall:.0f} s |"
        )
        failures += [f"{fault}: {f}" for f in s["failures"]]
        if fault in DATA_FAULTS:
            notes.append(f"{fault}: {s['files_hit']} files {_DONE[fault]} in {s['runs']} runs, "
                         f"{s['files_listed']} of them listed in skipped.txt")  # fmt: skip
    lines += ["", "Failures: " + ("; ".join(failures) if failures else "none.")]
    lines += [f"Data faults: {'; '.join(notes)}." if notes else ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


FAULTS = {
    "kill": "SIGKILL",
    "term": "SIGTERM (must exit 143 or 0, no traceback)",
    "full": "disk full on a 64 MiB tmpfs (must exit 3 naming the file, or 0)",
    "vanish": "30% of the PNGs deleted while decoding (must finish listing them, or exit 2)",
    "garble": "30% of the PNGs overwritten with random bytes while decoding (listed, or exit 2)",
}


if __name__ == "__main__":
    main()
