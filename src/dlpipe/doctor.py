"""What this machine has: versions, CUDA, onnxruntime providers that really run, data, weights."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import importlib.util
import io
import platform
import tempfile
from pathlib import Path
from typing import Any

from .export.providers import probe_providers, strip_ansi, tiny_onnx


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def probe_runtimes() -> list[dict[str, Any]]:
    """Each runtime `validate --runtimes` knows: installed?, version, and a tiny model really run."""
    import numpy as np

    from .export.runtimes import RUNTIMES

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "relu.onnx"
        tiny_onnx(model)
        x = np.array([[-1.0, 0.0, 2.0, -3.0]], dtype=np.float32)
        for name, rt in RUNTIMES.items():
            row: dict[str, Any] = {"runtime": name, "installed": rt.installed(),
                                   "version": rt.version(), "extra": rt.extra, "runs": False}  # fmt: skip
            if not row["installed"]:
                row["detail"] = f"not installed: pip install 'dlpipe[{rt.extra}]' (make install)"
            else:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        y = rt.open(model).run(x)
                    row["runs"] = bool(np.array_equal(y, np.maximum(x, 0)))
                    row["detail"] = "runs" if row["runs"] else "runs, but computed a wrong result"
                except Exception as exc:
                    row["detail"] = strip_ansi(str(exc).splitlines()[0][:160])
            rows.append(row)
    return rows


def collect() -> dict[str, Any]:
    """Everything `dlpipe doctor` reports, as plain data."""
    from .compat import ensure_torchvision, shim_status
    from .data.builtin import BUILTINS

    report: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "dlpipe",
        "torch",
        "torchvision",
        "timm",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "onnxruntime-gpu",
    ):
        report[dist] = _version(dist)
    both = bool(report["onnxruntime"] and report["onnxruntime-gpu"])
    report["onnxruntime_conflict"] = both
    cuda: dict[str, Any] = {"available": False}
    if importlib.util.find_spec("torch"):
        import torch

        cuda = {"available": torch.cuda.is_available(), "torch_cuda_build": torch.version.cuda}
        if cuda["available"]:
            cuda["device"] = torch.cuda.get_device_name(0)
            cuda["count"] = torch.cuda.device_count()
        import torch.distributed as dist

        report["distributed"] = {
            "available": dist.is_available(),
            "gloo": dist.is_available() and dist.is_gloo_available(),
            "nccl": dist.is_available() and dist.is_nccl_available(),
        }
        ensure_torchvision()
        applied, reason = shim_status()
        report["torchvision_shim"] = {"active": applied, "reason": reason}
    report["cuda"] = cuda
    report["providers"] = probe_providers()
    report["runtimes"] = probe_runtimes()
    report["datasets"] = {name: b.present(None) for name, b in BUILTINS.items()}
    report["weights"] = offline_weights()
    return report


def offline_weights() -> list[dict[str, Any]]:
    """Pretrained weight files available offline (torch-hub cache, offline packages), sha256-checked."""
    from .weights import offline_files

    return offline_files()
