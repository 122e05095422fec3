"""Latency of a runtime running the ONNX file beside torch eager on the same device: warm-up, median, p90."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

WARMUP = 3  # untimed runs first: allocations, kernel selection, caches


def timeit(fn: Callable[[], Any], runs: int, warmup: int = WARMUP) -> dict[str, float]:
    """Median and p90 wall time in milliseconds over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def measure_latency(
    runner: Any, torch_model: Any, shape: tuple[int, ...], batch_sizes: list[int], runs: int
) -> list[dict[str, Any]]:
    """Rows for batch 1 and the largest batch: the runtime (a runtimes.Runner) vs torch eager."""
    import torch

    sizes = [runner.static_batch] if runner.static_batch else sorted({1, max(batch_sizes)})
    device = runner.device
    ref = torch_model.to(device)
    rows = []
    for bs in sizes:
        x = np.random.default_rng(0).standard_normal((bs, *shape)).astype(np.float32)
        xt = torch.from_numpy(x).to(device)

        def run_torch(xt: Any = xt) -> None:
            with torch.no_grad():
                ref(xt)
            if device == "cuda":
                torch.cuda.synchronize()

        onnx_ms = timeit(lambda: runner.run(x), runs)  # noqa: B023 - called right here
        eager = timeit(run_torch, runs)
        rows.append(
            {
                "runtime": runner.runtime,
                "provider": runner.label,
                "batch": bs,
                "onnx": onnx_ms,
                "torch_eager": {**eager, "device": device},
                "speedup": eager["median_ms"] / onnx_ms["median_ms"]
                if onnx_ms["median_ms"]
                else None,
            }
        )
    torch_model.to("cpu")
    return rows
