"""onnxruntime sessions that prove which provider runs (no torch: the deployed path uses this).

onnxruntime lists CUDA among the available providers even where it cannot load, and a CUDA session
then silently runs on CPU. Here a session is created for exactly the provider asked for and
`session.get_providers()[0]` must be that provider; otherwise the provider FAILS with the reason
onnxruntime logged while trying it (captured from its native stderr).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
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
    advice: str = ""  # what to do about it, for what is installed here

    @property
    def unavailable(self) -> bool:
        """Not running because of this machine (exit 3), not because of the file (exit 1)."""
        return not self.ok and self.provider != "CPUExecutionProvider"


def import_ort():  # noqa: ANN201 - the onnxruntime module
    """Import onnxruntime or fail with exit 3 and the install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise EnvironmentProblem(
            f"onnxruntime is not importable ({exc}).",
            hint="Install it: pip install 'dlpipe[cpu]' (or dlpipe[gpu] for onnxruntime-gpu).",
        ) from None
    # onnxruntime's own logger writes to the terminal (with ANSI colours); dlpipe reports errors
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """onnxruntime's logger colours its lines; reports and messages carry plain text."""
    return _ANSI.sub("", text)


def advice(provider: str, available: list[str]) -> str:
    """What to do about an unavailable provider, for what is installed here."""
    gpu_build = "CUDAExecutionProvider" in available
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and not gpu_build:
        return (
            "This onnxruntime is the CPU build: `make install-gpu` swaps in onnxruntime-gpu "
            "(only onnxruntime changes; torch stays as installed), then run it on a machine with an "
            "NVIDIA GPU, CUDA and cuDNN. Or use --providers cpu."
        )
    if provider == "TensorrtExecutionProvider":
        return (
            "onnxruntime-gpu is installed but TensorRT did not start: install TensorRT's libraries "
            "(libnvinfer) where onnxruntime can load them; `dlpipe doctor` shows what runs."
        )
    if provider == "CUDAExecutionProvider":
        return (
            "onnxruntime-gpu is installed but CUDA did not start: this machine needs an NVIDIA GPU "
            "with a driver and the CUDA/cuDNN libraries onnxruntime-gpu was built for "
            "(onnxruntime.preload_dlls() can use torch's); `dlpipe doctor` shows what runs."
        )
    return "`dlpipe doctor` lists the providers that really run here; use one of those."


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
        reason = f"{provider} is not in this {build} {ort.__version__}; available: {', '.join(available)}."
        return None, ProviderResult(short, provider, False, [], reason, advice(provider, available))
    opts = no_spin(ort.SessionOptions())
    opts.log_severity_level = 1  # warnings and errors: the reason a provider fails to load
    log, printed = "", io.StringIO()
    try:
        # the Python side prints its "EP Error" banner on stdout; --json needs stdout clean
        with _capture_native_stderr() as text, contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(
                str(model), opts, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"]))
            )
        log = strip_ansi(text() + printed.getvalue())
    except Exception as exc:
        why = strip_ansi(str(exc))[:300]
        return None, ProviderResult(
            short, provider, False, [], f"session failed: {why}", advice(provider, available)
        )
    active = session.get_providers()
    if active[0] != provider:
        lines = [
            ln.strip() for ln in log.splitlines() if "rror" in ln or "ailed" in ln or "arn" in ln
        ]
        why = " | ".join(lines[-3:]) or "onnxruntime logged no reason"
        reason = f"asked for {provider} but onnxruntime runs {active[0]} (silent fallback): {why}"
        return None, ProviderResult(
            short, provider, False, active, reason[:600], advice(provider, available)
        )
    return session, ProviderResult(short, provider, True, active, "runs")


def require_session(model: str | Path, provider: str) -> Any:
    """A session on exactly `provider`, or exit 3 with the reason and advice that fit this install."""
    session, result = session_for(model, provider)
    if session is None:
        raise EnvironmentProblem(
            f"Provider {result.name} is not available: {result.reason}", hint=result.advice
        )
    return session


def runner_of(session: Any) -> Any:
    """A runtimes.Runner over an onnxruntime session (the provider that really runs)."""
    from .runtimes import Runner

    provider = session.get_providers()[0]
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    cuda = provider != "CPUExecutionProvider" and _torch_cuda()
    return Runner(
        runtime="onnxruntime",
        tag=SHORT.get(provider, provider.replace("ExecutionProvider", "").lower()),
        label=provider,
        input_name=inp.name,
        output_name=out.name,
        static_batch=static,
        run=lambda x: session.run(None, {inp.name: x})[0],
        device="cuda" if cuda else "cpu",
    )


def _torch_cuda() -> bool:
    """Whether the PyTorch reference can run on CUDA (torch imported only for GPU providers)."""
    import torch

    return torch.cuda.is_available()


def open_runner(model: Path, provider: str = "CPUExecutionProvider") -> Any:
    """The registry's opener for onnxruntime (exit 3 when the provider does not run here)."""
    return runner_of(require_session(model, provider))


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


def tiny_onnx(path: Path) -> None:
    """A one-Relu ONNX file: what probes run to see whether a provider or runtime works."""
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
        tiny_onnx(model)
        for provider in ort.get_available_providers():
            try:
                # a failing provider makes onnxruntime print an "EP Error" banner on stdout
                with contextlib.redirect_stdout(io.StringIO()):
                    session = ort.InferenceSession(str(model), providers=[provider])
                active = session.get_providers()
                runs = active[0] == provider
                detail = "runs" if runs else f"falls back to {active[0]}"
            except Exception as exc:  # a provider that cannot start says why
                runs, detail = False, strip_ansi(str(exc).splitlines()[0][:160])
            results.append({"provider": provider, "listed": True, "runs": runs, "detail": detail})
    return results
