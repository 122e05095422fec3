"""Deploy anywhere: parity in OpenVINO and tract, fp16 that tract runs, an honest opset,
crash-consistent external data, and exit 3 for what this machine lacks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import parse_json
from tests.test_export_helpers import (  # noqa: F401
    tiny_builders,
    write_classifier_run,
    write_generator_run,
)

pytestmark = pytest.mark.usefixtures("tiny_builders")
CPU_BUILD = "CUDAExecutionProvider" not in ort.get_available_providers()


def _export(cli, run, *args):
    result = cli("export", run, "--exporter", "torchscript", "--json", "--quiet", *args)
    assert result.exit_code == 0, result.output
    return parse_json(result.stdout)


def _validate(cli, model, *args):
    return cli("validate", model, "--n", "8", "--batch-sizes", "1,3", "--latency-runs", "1",
               "--json", *args)  # fmt: skip


def test_validate_in_every_installed_runtime(cli, tmp_path, image_folder):
    pytest.importorskip("openvino")
    pytest.importorskip("tract")
    out = _export(cli, write_classifier_run(tmp_path, image_folder))
    result = _validate(cli, out["model"], "--runtimes", "all")
    assert result.exit_code == 0, result.output
    payload = parse_json(result.stdout)
    runtimes = payload["metrics"]["runtimes"]
    assert set(runtimes) == {"onnxruntime", "openvino", "tract"}
    for name, r in runtimes.items():
        assert r["passed"] and r["max_abs_error"] < 1e-4 and r["top1_agreement"] == 1.0, name
        assert set(r["latency_ms"]) == {"batch_1", "batch_3"} and r["version"], name
    checks = {c["check"]: c for c in payload["parity"]["checks"]}
    # the same checks per runtime: names, shapes at every batch size, values, top-1 on real inputs
    for tag in ("openvino", "tract"):
        assert checks[f"load {tag}"]["ok"] and checks[f"names {tag}"]["ok"]
        assert checks[f"shapes {tag} real batch 3"]["ok"] and checks[f"top-1 {tag} real"]["ok"]
    assert "f32" in checks["load openvino"]["detail"]  # the precision hint really applied
    md = Path(out["model"]).with_suffix(".parity.md").read_text()
    assert "| openvino" in md and "| tract" in md


def test_perturbed_file_fails_in_other_runtimes_too(cli, tmp_path, image_folder):
    pytest.importorskip("tract")
    out = _export(cli, write_classifier_run(tmp_path, image_folder))
    model = onnx.load(out["model"])
    conv = next(i for i in model.graph.initializer if np.prod(i.dims) > 100)
    w = onnx.numpy_helper.to_array(conv) + 0.01
    conv.CopyFrom(onnx.numpy_helper.from_array(w, conv.name))
    onnx.save(model, "exports/bad.onnx")
    result = _validate(cli, "exports/bad.onnx", "--runtimes", "tract", "--inputs", "real")
    assert result.exit_code == 1
    runtimes = parse_json(result.stdout)["metrics"]["runtimes"]
    assert not runtimes["tract"]["passed"] and runtimes["tract"]["max_abs_error"] > 1e-4
    assert "values tract real" in runtimes["tract"]["failed"]


def test_fp16_file_runs_in_tract(cli, tmp_path, image_folder):
    tract = pytest.importorskip("tract")
    run = write_classifier_run(tmp_path, image_folder)
    out = _export(cli, run, "--fp16")
    ops = {n.op_type for n in onnx.load(out["model"]).graph.node}
    assert "Gemm" not in ops and {"MatMul", "Add"} <= ops
    assert out["precision"]["gemm_as_matmul_add"] == 1
    result = _validate(cli, out["model"], "--runtimes", "onnxruntime,tract")
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)["parity"]
    assert report["runtimes"]["tract"]["passed"] and report["tolerances"]["tract"]["atol"] == 1e-2
    # the reference point: a float16 Gemm with bias (what other converters write) fails in tract,
    # and validate says why and what to do
    from onnxruntime.transformers import float16

    fp32 = _export(cli, run, "--out", "exports/fp32.onnx")["model"]
    half = float16.convert_float_to_float16(onnx.load(fp32), keep_io_types=True)
    assert "Gemm" in {n.op_type for n in half.graph.node}
    onnx.save(half, "exports/gemm16.onnx")
    with pytest.raises(tract.TractError):
        tract.onnx().load("exports/gemm16.onnx").into_model()
    result = _validate(cli, "exports/gemm16.onnx", "--runtimes", "tract")
    assert result.exit_code == 1
    load = next(
        c for c in parse_json(result.stdout)["parity"]["checks"] if c["check"] == "load tract"
    )
    assert not load["ok"] and "Gemm" in load["detail"] and "MatMul+Add" in load["explain"]
    assert "Stack backtrace" not in result.output


def test_fp16_generator_in_every_installed_runtime(cli, tmp_path):
    # OpenVINO names a float16 model's output after the Cast that feeds it as well: still 'image'
    out = _export(cli, write_generator_run(tmp_path), "--fp16")
    result = _validate(cli, out["model"], "--runtimes", "all", "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    runtimes = parse_json(result.stdout)["metrics"]["runtimes"]
    assert all(r["passed"] for r in runtimes.values()), runtimes


def test_fp16_export_prints_no_warnings(cli, tmp_path, image_folder):
    result = cli("export", write_classifier_run(tmp_path, image_folder), "--fp16",
                 "--exporter", "torchscript")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "warn" not in result.stderr.lower()


def test_openvino_bf16_is_judged_with_fp16_tolerances(cli, tmp_path, image_folder):
    pytest.importorskip("openvino")
    out = _export(cli, write_classifier_run(tmp_path, image_folder))
    result = _validate(cli, out["model"], "--runtimes", "openvino", "--openvino-precision", "bf16")
    report = parse_json(result.stdout)["parity"]
    load = next(c for c in report["checks"] if c["check"] == "load openvino")
    real = load["detail"].split()[2]  # "OpenVINO CPU <precision> (...)": what the plugin uses
    if real == "f32":  # a CPU without bf16 support keeps f32 whatever the hint says
        assert report["tolerances"]["openvino"]["atol"] == 1e-4
    else:
        assert real == "bf16" and report["tolerances"]["openvino"]["atol"] == 1e-2
    bad = _validate(cli, out["model"], "--runtimes", "openvino", "--openvino-precision", "f8")
    assert bad.exit_code == 2 and "--openvino-precision" in bad.stderr


def test_runtime_not_installed_exits_3_naming_the_extra(cli, tmp_path, image_folder, monkeypatch):
    from dlpipe.export import runtimes

    missing = dataclasses.replace(runtimes.RUNTIMES["tract"], module="dlpipe_no_such_module")
    monkeypatch.setitem(runtimes.RUNTIMES, "tract", missing)
    out = _export(cli, write_classifier_run(tmp_path, image_folder))
    result = _validate(cli, out["model"], "--runtimes", "onnxruntime,tract")
    assert result.exit_code == 3
    assert "dlpipe[tract]" in result.stderr and "Traceback" not in result.output
    # `all` means every runtime installed: the missing one is noted, not fatal
    result = _validate(cli, out["model"], "--runtimes", "all", "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)["parity"]
    assert "tract" not in report["runtimes"] and any("tract" in n for n in report["notes"])
    unknown = _validate(cli, out["model"], "--runtimes", "tensorflow")
    assert unknown.exit_code == 2 and "tensorflow" in unknown.stderr


def test_doctor_lists_runtimes(cli):
    result = cli("doctor", "--json")
    report = parse_json(result.stdout)  # onnxruntime's banners never reach stdout
    rows = {r["runtime"]: r for r in report["runtimes"]}
    assert set(rows) == {"onnxruntime", "openvino", "tract"}
    assert rows["onnxruntime"]["runs"] and rows["onnxruntime"]["version"] == ort.__version__
    for name in ("openvino", "tract"):
        r = rows[name]
        assert r["runs"] if r["installed"] else f"dlpipe[{name}]" in r["detail"]


def _opset(path: str) -> int:
    return next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))


def test_opset_13_gives_an_opset_13_file_or_a_clear_error(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    result = cli("export", run, "--opset", "13", "--json", "--quiet")  # auto
    assert result.exit_code == 0, result.output
    out = parse_json(result.stdout)
    assert _opset(out["model"]) == 13
    assert (
        out["exporter"]["used"] == "torchscript" and "dynamo" in out["exporter"]["fallback_reason"]
    )
    sidecar = json.loads(Path(out["artifacts"]["metadata"]).read_text())
    inside = json.loads({p.key: p.value for p in onnx.load(out["model"]).metadata_props}["dlpipe"])
    assert sidecar["opset"] == inside["opset"] == 13
    assert "Traceback" not in result.output  # onnxscript's logged traceback stays hidden
    # dynamo alone cannot write opset 13: a clear error, nothing written
    result = cli("export", run, "--opset", "13", "--exporter", "dynamo", "--out", "exports/d.onnx")
    assert result.exit_code == 2 and "opset" in result.stderr and "torchscript" in result.stderr
    assert "Traceback" not in result.output and not Path("exports/d.onnx").exists()


def _outputs(path: str) -> np.ndarray:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _data_files() -> list[str]:
    return sorted(p.name for p in Path("exports").glob("ext.onnx*.data"))


def test_external_data_export_is_crash_consistent(cli, tmp_path, image_folder, monkeypatch):
    from dlpipe.checkpoint import load_checkpoint, save_checkpoint
    from dlpipe.export import files

    run = write_classifier_run(tmp_path, image_folder)
    first = _export(cli, run, "--external-data", "--out", "exports/ext.onnx")
    data = Path(first["artifacts"]["external_data"])
    assert re.fullmatch(r"ext\.onnx\.[0-9a-f]{16}\.data", data.name)
    assert data.stat().st_mode & 0o777 == Path("exports/ext.onnx").stat().st_mode & 0o777
    old = _outputs("exports/ext.onnx")
    ckpt_path = run / "checkpoints" / "last.safetensors"
    ckpt = load_checkpoint(ckpt_path)
    ckpt.weights["model"]["features.3.weight"] *= 1.5  # external (> 1 KiB): other data, outputs
    save_checkpoint(ckpt_path, ckpt.weights, ckpt.meta)

    # killed after the new data is in place but before the model switch: the old pair still holds
    real_replace = os.replace

    def die_on_model(src, dst):
        if str(dst).endswith(".onnx"):
            raise KeyboardInterrupt  # stands for SIGKILL at this exact point
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", die_on_model)
    killed = cli("export", run, "--exporter", "torchscript", "--external-data", "--out",
                 "exports/ext.onnx", "--force")  # fmt: skip
    assert killed.exit_code == 130
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert len(_data_files()) == 2  # the new data sits beside, under its own name
    np.testing.assert_array_equal(_outputs("exports/ext.onnx"), old)

    # killed after the switch but before the old data is removed: the new pair holds
    remove = files._remove_stale_data
    monkeypatch.setattr(files, "_remove_stale_data", lambda *a, **k: None)
    second = _export(cli, run, "--external-data", "--out", "exports/ext.onnx", "--force")
    monkeypatch.setattr(files, "_remove_stale_data", remove)
    new = _outputs("exports/ext.onnx")
    assert not np.allclose(new, old)
    assert files.data_files(Path("exports/ext.onnx")) == [
        Path(second["artifacts"]["external_data"])
    ]

    # the next complete export leaves exactly one pair, and a single-file export none
    third = _export(cli, run, "--external-data", "--out", "exports/ext.onnx", "--force")
    assert _data_files() == [Path(third["artifacts"]["external_data"]).name]
    np.testing.assert_array_equal(_outputs("exports/ext.onnx"), new)
    _export(cli, run, "--out", "exports/ext.onnx", "--force")
    assert _data_files() == [] and not [p for p in Path("exports").iterdir() if p.name[0] == "."]


@pytest.mark.skipif(not CPU_BUILD, reason="onnxruntime-gpu is installed")
def test_unavailable_provider_is_exit_3_in_predict(cli, tmp_path, image_folder):
    out = _export(cli, write_classifier_run(tmp_path, image_folder))
    result = cli("predict", out["model"], image_folder / "cat" / "0.png", "--provider", "cuda")
    assert result.exit_code == 3
    assert "make install-gpu" in result.stderr and "torch stays" in result.stderr
    assert "\x1b[" not in result.output and "EP Error" not in result.stdout


def test_cuda_device_advice_fits_a_cpu_torch():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from dlpipe.errors import EnvironmentProblem
    from dlpipe.runtime import resolve_device

    with pytest.raises(EnvironmentProblem) as info:
        resolve_device("cuda")
    assert info.value.exit_code == 3
    if not torch.version.cuda:  # a CPU torch: make install-gpu would not help, and we say so
        assert "swaps only onnxruntime" in info.value.hint
