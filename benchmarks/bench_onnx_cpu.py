"""ORT CPU vs torch eager latency, dlpipe's own export, dynamo vs TorchScript, side by side.

Usage: .venv/bin/python benchmarks/bench_onnx_cpu.py [--models mobilenet_v2,resnet18,densenet121]
           [--runs1 20] [--runs32 3]
Writes benchmarks/results/onnx_cpu.md and .json (with nproc, CPU model, versions). Random weights:
latency does not depend on the weight values. Targets (issue 5): ORT >= 2.0x torch eager at batch 1
and >= 2.5x at batch 32. This machine is shared and noisy: trust the ratios, measured back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from dlpipe.compat import import_torchvision
from dlpipe.export import files
from dlpipe.export.onnx import ExportConfig, to_proto
from dlpipe.export.providers import no_spin
from dlpipe.export.spec import IOSpec

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = ""
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"nproc": nproc, "cpu": cpu, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}  # fmt: skip


def export(model, exporter: str, folder: Path) -> tuple[Path, float]:
    """dlpipe's exporter path (to_proto + atomic save + full check), timed."""
    spec = IOSpec("image", "logits", "image", "logits")
    start = time.perf_counter()
    proto, _ = to_proto(model, (3, 224, 224), spec, ExportConfig(source="-", exporter=exporter))
    path = folder / f"{exporter}.onnx"
    files.save_model(proto, path, external_data=False, check=files.full_check)
    return path, time.perf_counter() - start


def session(path: Path):
    import onnxruntime as ort

    opts = no_spin(ort.SessionOptions())  # spinning ORT threads would slow torch measured beside it
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(fns: dict, runs: int, warmup: int) -> dict:
    """Time the candidates round-robin, so load drift on a shared machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(runs):
        keys = list(fns)[i % len(fns) :] + list(fns)[: i % len(fns)]  # rotate who goes first
        for k in keys:
            start = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - start) * 1000.0)
    return {
        k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90))}
        for k, v in times.items()
    }


def bench_model(name: str, runs: dict[int, int], folder: Path) -> dict:
    import torch

    tv = import_torchvision()
    model = getattr(tv.models, name)(weights=None).eval()
    exported = {ex: export(model, ex, folder) for ex in ("dynamo", "torchscript")}
    row: dict = {
        "model": name,
        "export_s": {k: round(v[1], 2) for k, v in exported.items()},
        "batches": {},
    }
    sessions = {ex: session(p) for ex, (p, _) in exported.items()}
    for bs, n in runs.items():
        x = np.random.default_rng(0).standard_normal((bs, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            ref = model(xt).numpy()
        fns = {"torch_eager": lambda: model(xt)}  # noqa: B023
        fns.update({ex: (lambda s=s: s.run(None, {"image": x})) for ex, s in sessions.items()})  # noqa: B023
        with torch.no_grad():
            cell = interleaved(fns, n, warmup=3 if bs == 1 else 1)
        for ex, s in sessions.items():
            cell[ex]["max_abs_err"] = float(np.abs(s.run(None, {"image": x})[0] - ref).max())
            cell[ex]["speedup"] = cell["torch_eager"]["median_ms"] / cell[ex]["median_ms"]
        row["batches"][str(bs)] = cell
        print(name, bs, {k: round(v["median_ms"], 1) for k, v in cell.items()}, flush=True)
    return row


def to_markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        "# ONNX Runtime CPU vs torch eager (dlpipe export)", "",
        f"Machine: {info['nproc']} cores, {info['cpu']}; torch {info['torch']} ({info['torch_threads']} threads), "
        f"onnxruntime {info['onnxruntime']}, Python {info['python']}. Random weights, 224x224, median of N runs, candidates timed round-robin.", "",
        "Reproduce: `.venv/bin/python benchmarks/bench_onnx_cpu.py`", "",
        "| model | batch | torch eager ms | ORT dynamo ms (x) | ORT torchscript ms (x) | max abs err dyn / ts | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in rows:
        for bs, c in r["batches"].items():
            d, t = c["dynamo"], c["torchscript"]
            target = "2.0x" if bs == "1" else "2.5x"
            lines.append(
                f"| {r['model']} | {bs} | {c['torch_eager']['median_ms']:.1f} | {d['median_ms']:.1f} ({d['speedup']:.2f}x) | "
                f"{t['median_ms']:.1f} ({t['speedup']:.2f}x) | {d['max_abs_err']:.1e} / {t['max_abs_err']:.1e} | {target} |"
            )
    lines += ["", "Export time (s): " + ", ".join(f"{r['model']} {r['export_s']}" for r in rows)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18,densenet121")
    parser.add_argument("--runs1", type=int, default=20)
    parser.add_argument("--runs32", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "onnx_cpu"))
    args = parser.parse_args()
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench_model(name, {1: args.runs1, 32: args.runs32}, Path(tmp)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"machine": info, "results": rows}, indent=2) + "\n"
    )
    out.with_suffix(".md").write_text(to_markdown(info, rows))
    print(to_markdown(info, rows))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
