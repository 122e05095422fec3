"""onnxruntime sessions that prove which provider runs (no torch: the deployed path uses this).

onnxruntime lists CUDA among the available providers even where it cannot load, and a CUDA session
then silently runs on CPU. Here a session is created for exactly the provider asked for and
`session.get_providers()[0]` must be that provider; otherwise the provider FAILS with the reason
onnxruntime logged while trying it (captured from its native stderr).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput, EnvironmentProblem

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
SHORT = {v: k for k, v in ALIASES.items() if k != "trt"}


@dataclass
class ProviderResult:
    """Whether a requested provider really runs, and why not when it does not."""

    name: str  # short name: cpu, cuda, tensorrt
    provider: str  # onnxruntime's name
    ok: bool
    active: list[str]
    reason: str


def import_ort():  # noqa: ANN201 - the onnxruntime module
    """Import onnxruntime or fail with exit 3 and the install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise EnvironmentProblem(
            f"onnxruntime is not importable ({exc}).",
            hint="Install it: pip install 'dlpipe[cpu]' (or dlpipe[gpu] for onnxruntime-gpu).",
        ) from None
    return onnxruntime


def parse_providers(text: str) -> list[str]:
    """`auto` or a comma list (cpu,cuda,tensorrt or full onnxruntime names) -> onnxruntime names."""
    ort = import_ort()
    items = [t.strip() for t in (text or "auto").split(",") if t.strip()]
    if items == ["auto"]:
        # Azure's provider calls remote endpoints; it computes nothing locally
        listed = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
        return [p for p in listed if _runs_here(p)]
    names = []
    for item in items:
        name = ALIASES.get(item.lower(), item)
        if not name.endswith("ExecutionProvider"):
            raise BadInput(
                f"--providers: {item!r} is not a provider name.",
                hint=f"Use auto or a comma list of {', '.join(ALIASES)}.",
            )
        names.append(name)
    return names


_PROBED: dict[str, bool] = {}


def _runs_here(provider: str) -> bool:
    """`auto` keeps a listed provider only if a tiny session really runs on it."""
    if provider not in _PROBED:
        from ..doctor import probe_providers

        for row in probe_providers():
            _PROBED[row["provider"]] = bool(row["runs"])
    return _PROBED.get(provider, False)


@contextmanager
def _capture_native_stderr():  # noqa: ANN202 - yields a callable returning the captured text
    """onnxruntime logs from C++ straight to fd 2; capture it to explain a failure."""
    captured = {"text": ""}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: captured["text"]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured["text"] = sink.read().decode("utf-8", "replace")


def session_for(model: str | Path, provider: str) -> tuple[Any | None, ProviderResult]:
    """A session on exactly `provider`, or None with the reason it does not run there."""
    ort = import_ort()
    short = SHORT.get(provider, provider)
    available = ort.get_available_providers()
    if provider not in available:
        build = (
            "onnxruntime-gpu" if "CUDAExecutionProvider" in available else "onnxruntime (CPU build)"
        )
        reason = (
            f"{provider} is not in this {build} {ort.__version__}; available: {', '.join(available)}."
            " Install onnxruntime-gpu (make install-gpu) on a machine with CUDA."
        )
        return None, ProviderResult(short, provider, False, [], reason)
    opts = no_spin(ort.SessionOptions())
    opts.log_severity_level = 1  # warnings and errors: the reason a provider fails to load
    log = ""
    try:
        with _capture_native_stderr() as text:
            session = ort.InferenceSession(
                str(model), opts, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"]))
            )
        log = text()
    except Exception as exc:
        return None, ProviderResult(short, provider, False, [], f"session failed: {str(exc)[:300]}")
    active = session.get_providers()
    if active[0] != provider:
        lines = [
            ln.strip() for ln in log.splitlines() if "rror" in ln or "ailed" in ln or "arn" in ln
        ]
        why = " | ".join(lines[-3:]) or "onnxruntime logged no reason"
        reason = f"asked for {provider} but onnxruntime runs {active[0]} (silent fallback): {why}"
        return None, ProviderResult(short, provider, False, active, reason[:600])
    return session, ProviderResult(short, provider, True, active, "runs")


def no_spin(opts: Any) -> Any:
    """Idle onnxruntime threads busy-wait by default, stealing the cores torch (the reference,
    measured right after) needs: torch eager then looks 2-10x slower than it is."""
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def cpu_session(model: str | Path, threads: int | None = None) -> Any:
    """A plain CPU session (predict/inspect), with a clear error for unloadable files."""
    ort = import_ort()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BadInput(
            f"onnxruntime cannot load {model}: {str(exc).splitlines()[0][:300]}",
            hint="Is it a complete ONNX model (with its .onnx.data beside it, if any)? Re-export it.",
        ) from None
