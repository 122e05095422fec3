"""The runtimes `dlpipe validate --runtimes` can judge: a small registry, name -> how to open a file.

Each runtime is imported only when asked for. Opening a file gives a `Runner`: the names the
runtime sees, its batch axis, and a `run(x) -> y` that parity and latency use alike, so every
runtime gets the same inputs, tolerances and task checks. onnxruntime is opened once per provider
(providers.py proves which one really runs); OpenVINO and tract run on the CPU.

Measured facts behind the defaults (DESIGN.md section 5): OpenVINO's CPU plugin picks bf16 by itself
on CPUs with AMX/AVX512-BF16, which flipped top-1 predictions; f32 is therefore the default hint and
bf16 is judged with the fp16 tolerances. tract names a graph's outputs by the node that makes them,
so its output name is read from the file.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, EnvironmentProblem

OPENVINO_PRECISIONS = ("f32", "bf16", "auto")  # auto: whatever the CPU plugin picks by itself
_OV_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # OpenVINO's element names


@dataclass
class Runner:
    """One opened model in one runtime, ready to run float32 batches."""

    runtime: str  # registry name: onnxruntime, openvino, tract
    tag: str  # label in check names: cpu / cuda / tensorrt for onnxruntime, else the runtime
    label: str  # what runs, for the latency table: CPUExecutionProvider, OpenVINO CPU f32, tract
    input_name: str
    output_name: str
    static_batch: int | None  # None: the batch axis is symbolic
    run: Callable[[np.ndarray], np.ndarray]
    device: str = "cpu"  # where the PyTorch reference runs for a fair comparison
    precision: str = "f32"  # the precision the runtime really computes in (as far as it says)


@dataclass(frozen=True)
class Runtime:
    """A registry entry: the package that provides it and the function that opens a file."""

    name: str
    module: str  # import name
    dist: str  # pip distribution name (for versions and the install hint)
    extra: str  # dlpipe extra that installs it
    opener: str  # "module:function" in this package, so nothing is imported before it is needed

    def installed(self) -> bool:
        """Whether its package is importable here (without importing it)."""
        return importlib.util.find_spec(self.module) is not None

    def version(self) -> str | None:
        """Installed version, or None."""
        try:
            return md.version(self.dist)
        except md.PackageNotFoundError:
            return None

    def require(self) -> None:
        """Exit 3 with the install hint when the package is missing."""
        if not self.installed():
            raise EnvironmentProblem(
                f"--runtimes {self.name}: the {self.dist} package is not installed.",
                hint=f"Install it with pip install 'dlpipe[{self.extra}]' (make install includes it), "
                "or leave it out of --runtimes (`all` means every runtime installed here).",
            )

    def open(self, model: Path, **options: Any) -> Runner:
        """Open `model` in this runtime (imports the runtime now)."""
        self.require()
        mod, fn = self.opener.split(":")
        return getattr(importlib.import_module(mod, __package__), fn)(model, **options)


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("onnxruntime", "onnxruntime", "onnxruntime", "cpu", ".providers:open_runner"),
        Runtime("openvino", "openvino", "openvino", "openvino", ".runtimes:open_openvino"),
        Runtime("tract", "tract", "tract", "tract", ".runtimes:open_tract"),
    )
}


def parse_runtimes(text: str) -> tuple[list[str], list[str]]:
    """`all` or a comma list -> (runtimes to run, notes on the ones `all` left out)."""
    items = [t.strip().lower() for t in (text or "onnxruntime").split(",") if t.strip()]
    if items == ["all"]:
        chosen = [n for n, r in RUNTIMES.items() if r.installed()]
        notes = [
            f"runtime {n} not installed (pip install 'dlpipe[{r.extra}]'); skipped by `all`"
            for n, r in RUNTIMES.items()
            if not r.installed()
        ]
        return chosen, notes
    unknown = [t for t in items if t not in RUNTIMES]
    if unknown or not items:
        raise BadInput(
            f"--runtimes {text!r}: {', '.join(unknown) or 'empty'} is not a runtime dlpipe knows.",
            hint=f"Use all or a comma list of {', '.join(RUNTIMES)}.",
        )
    for name in items:
        RUNTIMES[name].require()  # a missing one fails before any work is done
    return list(dict.fromkeys(items)), []


def _graph_names(model: Path) -> tuple[str, str]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in weights]
    return inputs[0], graph.output[0].name


def open_openvino(model: Path, precision: str = "f32") -> Runner:
    """OpenVINO's CPU plugin with an explicit inference precision hint (f32 unless asked)."""
    import openvino as ov

    if precision not in OPENVINO_PRECISIONS:
        raise BadInput(
            f"--openvino-precision {precision!r} is not one of {', '.join(OPENVINO_PRECISIONS)}.",
            hint="f32 (default, exact), bf16 (what AMX/AVX512-BF16 CPUs pick by default) or auto.",
        )
    core = ov.Core()
    try:
        read = core.read_model(str(model))
        config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}
        compiled = core.compile_model(read, "CPU", config)
    except Exception as exc:
        raise _cannot_load("OpenVINO", model, exc) from None
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).split(":")[-1].strip(" '>")
    real = _OV_TYPES.get(hint, hint)
    first = read.inputs[0].get_partial_shape()[0]
    output = compiled.outputs[0]

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(compiled({0: x})[output])

    graph_in, graph_out = _graph_names(model)
    return Runner(
        runtime="openvino",
        tag="openvino",
        label=f"OpenVINO CPU {real}",
        input_name=_named(read.inputs[0], graph_in),
        output_name=_named(output, graph_out),
        static_batch=first.get_length() if first.is_static else None,
        run=run,
        precision=real,
    )


def _named(port: Any, wanted: str) -> str:
    """OpenVINO gives a tensor all the names it had (a Cast's output and the graph output alike)."""
    names = port.get_names()
    return wanted if wanted in names else port.get_any_name()


def open_tract(model: Path) -> Runner:
    """tract (the Rust engine) through its Python bindings; optimised once for a symbolic batch."""
    import tract

    try:
        loaded = tract.onnx().load(str(model))
        input_name = loaded.input_name(0)
        runnable = loaded.into_model().into_runnable()
    except Exception as exc:
        raise _cannot_load("tract", model, exc) from None
    first = str(runnable.input_fact(0)).split(",")[0]
    _, output_name = _graph_names(model)  # tract reports output *node* names

    def run(x: np.ndarray) -> np.ndarray:
        return runnable.run([x])[0].to_numpy()

    return Runner(
        runtime="tract",
        tag="tract",
        label="tract CPU",
        input_name=input_name,
        output_name=output_name,
        static_batch=int(first) if first.isdigit() else None,
        run=run,
    )


class RuntimeCannotLoad(Exception):
    """The runtime is installed but refuses this file (a failed check, not a missing package)."""


def _cannot_load(runtime: str, model: Path, exc: Exception) -> RuntimeCannotLoad:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # tract appends a Rust backtrace; the cause is the first lines
    cause = " / ".join(ln for ln in lines[:4] if not ln[:1].isdigit() and ln != "Stack backtrace:")
    return RuntimeCannotLoad(f"{runtime} cannot load {model.name}: {cause[:400]}")
