"""`--fp16` (mixed precision where activations would overflow) and `--int8` (QDQ) on CPU."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.conftest import parse_json
from tests.test_export_helpers import (  # noqa: F401
    tiny_builders,
    write_autoencoder_run,
    write_classifier_run,
)

pytestmark = pytest.mark.usefixtures("tiny_builders")


def _export(cli, *args):
    result = cli("export", *args, "--exporter", "torchscript", "--json", "--quiet")
    return result, (
        parse_json(result.stdout) if result.exit_code in (0, 1) and result.stdout.strip() else None
    )


def _elem_types(path: str) -> set[int]:
    model = onnx.load(path)
    return {i.data_type for i in model.graph.initializer}


def test_fp16_keeps_float32_io_and_validates(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    result, out = _export(cli, run, "--fp16", "--validate")
    assert result.exit_code == 0, result.output
    assert out["model"] == "exports/tiny-fp16.onnx" and out["precision"]["fp32_nodes"] == []
    assert onnx.TensorProto.FLOAT16 in _elem_types(out["model"])
    model = onnx.load(out["model"])
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O
    report = out["parity"]
    assert report["dtype"] == "fp16" and report["tolerance"]["atol"] == 1e-2 and report["passed"]


def test_fp16_overflowing_activations_stay_float32(cli, tmp_path, image_folder):
    from dlpipe.checkpoint import load_checkpoint, save_checkpoint

    run = write_classifier_run(tmp_path, image_folder)
    path = run / "checkpoints" / "last.safetensors"
    ckpt = load_checkpoint(path)
    ckpt.weights["model"]["head.weight"] *= 1e6  # logits far beyond float16's 65504
    save_checkpoint(path, ckpt.weights, ckpt.meta)
    result, out = _export(cli, run, "--fp16")
    assert result.exit_code == 0, result.output
    blocked = out["precision"]["fp32_nodes"]
    assert blocked and out["precision"]["max_activation"] > 65504
    assert any("stay float32" in n and blocked[0] in n for n in out["precision"]["notes"])
    # the overflowing logits come out finite and in the right order; element-wise, float16
    # features times 1e6 weights are legitimately off by ~1e-3 relative, so only that may fail
    res = cli(
        "validate", out["model"], "--providers", "cpu", "--n", "8", "--latency-runs", "0", "--json"
    )
    checks = {r["check"]: r for r in parse_json(res.stdout)["parity"]["checks"]}
    assert checks["values cpu real"]["stats"]["non_finite"] == 0
    assert checks["cosine cpu real"]["ok"] and checks["top-1 cpu real"]["ok"]


def test_int8_classifier_measures_accuracy_change(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    result, out = _export(cli, run, "--int8", "--validate")
    assert result.exit_code == 0, result.output
    prec = out["precision"]
    assert prec["dtype"] == "int8" and prec["calibration_images"] > 0
    assert prec["accuracy_fp32"] is not None and prec["accuracy_change"] == pytest.approx(
        prec["accuracy_int8"] - prec["accuracy_fp32"]
    )
    ops = {n.op_type for n in onnx.load(out["model"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert out["parity"]["dtype"] == "int8" and out["parity"]["tolerance"]["atol"] is None
    assert Path("exports/tiny-int8.json").exists()


def test_int8_refused_for_autoencoders(cli, tmp_path):
    run = write_autoencoder_run(tmp_path)
    result = cli("export", run, "--int8", "--exporter", "torchscript")
    assert result.exit_code == 2 and "--fp16" in result.stderr
    assert cli("export", run, "--int8", "--fp16").exit_code == 2
