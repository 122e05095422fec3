"""What this machine has: versions, CUDA, onnxruntime providers that really run, data, weights."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import importlib.util
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Send what C/C++ code writes to file descriptor 1 to stderr while the block runs: after
    `make install-gpu` on a machine without CUDA, onnxruntime prints its `*** EP Error ***` banner
    straight to fd 1, and `doctor --json` must stay one JSON object on stdout."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ else 1
        saved = os.dup(fd)
    except (
        OSError,
        ValueError,
        AttributeError,
    ):  # no real stdout (embedded, closed): nothing to do
        yield
        return
    for stream in (sys.stdout, sys.__stdout__):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        os.dup2(2, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def probe_providers() -> list[dict[str, Any]]:
    """For each listed provider, create a real session and report what `get_providers()` says runs."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return [
            {
                "provider": "-",
                "listed": False,
                "runs": False,
                "detail": f"onnxruntime not importable: {exc}",
            }
        ]
    ort.set_default_logger_severity(4)
    results = []
    with tempfile.TemporaryDirectory() as tmp, native_stdout_to_stderr():
        model = Path(tmp) / "relu.onnx"
        _tiny_onnx(model)
        for provider in ort.get_available_providers():
            try:
                session = ort.InferenceSession(str(model), providers=[provider])
                active = session.get_providers()
                runs = active[0] == provider
                detail = "runs" if runs else f"falls back to {active[0]}"
            except Exception as exc:  # a provider that cannot start says why
                runs, detail = False, str(exc).splitlines()[0][:160]
            results.append({"provider": provider, "listed": True, "runs": runs, "detail": detail})
    return results


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
    report["datasets"] = {name: b.present(None) for name, b in BUILTINS.items()}
    report["weights"] = offline_weights()
    return report


def offline_weights() -> list[dict[str, Any]]:
    """Pretrained weight files available offline (torch-hub cache, offline packages), sha256-checked."""
    from .weights import offline_files

    return offline_files()
