"""A frozen network's forward pass through onnxruntime: the network is exported once per (exact
weights, input shape) into $DLPIPE_CACHE_DIR/onnx and then run by an onnxruntime CPU session.

On CPU onnxruntime runs the frozen feature pass several times faster than torch eager (measured in
benchmarks/results/data.md), and the features agree with eager's to fp32 rounding (tests). It is
used only where it is the faster engine: a CPU device without autocast. DLPIPE_FEATURE_ENGINE
(auto | torch | onnxruntime) overrides the choice; a network that cannot be exported falls back to
torch eager. Files are written atomically with a sha256 beside them; a bad file is re-exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes, write_text
from ..data.index import cache_root

FORMAT = "dlpipe-frozen-onnx/1"
ENGINES = ("auto", "torch", "onnxruntime")
_SESSIONS: dict[str, Any] = {}


MIN_IMAGES = 512  # below this the one-off export (seconds) costs more than onnxruntime saves


def wanted_engine(device: Any, autocast: bool = False, images: int | None = None) -> str:
    """'onnxruntime' or 'torch' for a frozen pass over `images` on `device` (see the module's
    note): auto picks onnxruntime on CPU without autocast, for passes of MIN_IMAGES or more."""
    choice = os.environ.get("DLPIPE_FEATURE_ENGINE", "auto").strip().lower() or "auto"
    if choice not in ENGINES:
        from ..errors import BadInput

        raise BadInput(
            f"DLPIPE_FEATURE_ENGINE={choice!r} is not known.",
            hint=f"Use one of: {', '.join(ENGINES)}.",
        )
    if choice == "torch" or autocast or getattr(device, "type", str(device)) != "cpu":
        return "torch"
    if choice == "auto" and images is not None and images < MIN_IMAGES:
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


class OrtNet:
    """Callable float32 NCHW numpy -> float32 numpy, the exported network in a CPU session."""

    def __init__(self, session: Any, path: Path) -> None:
        self.session, self.path = session, path
        self.input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _export(module: Any, shape: tuple[int, ...]) -> bytes:
    """ONNX bytes of `module` (eval mode) with a dynamic batch axis; TorchScript exporter first
    (seconds), the dynamo exporter if that fails."""
    import torch

    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with (
                torch.random.fork_rng(),
                torch.no_grad(),
                warnings.catch_warnings(),
                _silent(),
            ):
                warnings.simplefilter("ignore")
                if dynamo:
                    program = torch.onnx.export(
                        module, (example,), None, dynamo=True, input_names=["x"],
                        output_names=["y"], optimize=True, verbose=False,
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                    )  # fmt: skip
                    return program.model_proto.SerializeToString()
                torch.onnx.export(
                    module, (example,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
                    do_constant_folding=True,
                )  # fmt: skip
                return buf.getvalue()
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then fall back
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise RuntimeError("; ".join(errors))


@contextlib.contextmanager
def _silent() -> Iterator[None]:
    """The exporters print progress and, on failure, whole graphs, some of it from C++ straight
    to file descriptors 1 and 2: both go to a scratch file while exporting (--json needs a clean
    stdout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(io.StringIO()):
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _valid(path: Path) -> bool:
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        blob = path.read_bytes()
        return meta.get("format") == FORMAT and hashlib.sha256(blob).hexdigest() == meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ort_net(
    module: Any, weights_hash: str, shape: tuple[int, ...], threads: int = 0
) -> OrtNet | None:
    """The exported `module` for inputs (N, *shape) in an onnxruntime session, from the cache when
    there; None when it cannot be exported or loaded (the caller runs torch eager)."""
    import torch

    key = hashlib.sha256(
        json.dumps([FORMAT, weights_hash, list(shape), torch.__version__]).encode()
    ).hexdigest()[:24]
    if key in _SESSIONS:
        return _SESSIONS[key]
    path = cache_root() / "onnx" / f"frozen-{key}.onnx"
    try:
        if not _valid(path):
            was = module.training
            blob = _export(module.eval(), shape)
            module.train(was)
            write_bytes(path, blob)
            meta = {"format": FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
                    "shape": list(shape), "weights": weights_hash}  # fmt: skip
            write_text(path.with_suffix(".json"), json.dumps(meta))
        source: Any = str(path)
    except OSError:  # an unwritable cache: export into memory, run from there
        source = _export(module.eval(), shape)
    except RuntimeError:
        return None
    net = _session(source, threads, path)
    _SESSIONS[key] = net
    return net


def _session(source: Any, threads: int, path: Path) -> OrtNet | None:
    import onnxruntime as ort

    from .providers import no_spin

    opts = no_spin(ort.SessionOptions())
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return OrtNet(ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"]), path)
    except Exception:  # noqa: BLE001 - a file onnxruntime refuses: eager instead
        return None
