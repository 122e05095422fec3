"""`dlpipe validate`: the negative test, provider truth, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tests.conftest import parse_json
from tests.test_export_helpers import tiny_builders, write_classifier_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("tiny_builders")


@pytest.fixture
def exported(cli, tmp_path, image_folder) -> Path:
    run = write_classifier_run(tmp_path, image_folder)
    result = cli("export", run, "--exporter", "torchscript", "--quiet")
    assert result.exit_code == 0, result.output
    return Path("exports/tiny.onnx")


def test_perturbed_initializer_fails_with_explained_report(cli, exported):
    model = onnx.load(str(exported))
    conv = next(i for i in model.graph.initializer if np.prod(i.dims) > 100)  # a conv kernel
    w = numpy_helper.to_array(conv).copy()
    w += 0.01  # a conv kernel nudged by 0.01: a real edit/export bug, not a rounding difference
    conv.CopyFrom(numpy_helper.from_array(w, conv.name))
    onnx.save(model, "exports/perturbed.onnx")

    result = cli(
        "validate",
        "exports/perturbed.onnx",
        "--providers",
        "cpu",
        "--latency-runs",
        "0",
        "--n",
        "16",
        "--json",
    )
    assert result.exit_code == 1
    payload = parse_json(result.stdout)
    report = payload["parity"]
    assert not report["passed"]
    # the headline figures agree with the report they summarise
    assert payload["metrics"]["parity_passed"] is False
    worst = max(r["stats"]["max_abs"] for r in report["checks"] if "stats" in r)
    assert payload["metrics"]["max_abs_error"] == worst > 1e-4
    failed = {r["check"]: r for r in report["checks"] if not r["ok"]}
    values = failed["values cpu real"]
    assert values["stats"]["max_abs"] > 1e-4 and values["stats"]["outside_tolerance"] > 0
    assert "Largest difference" in values["explain"] and "sha256" in values["explain"]
    # names and shapes still passed: the report says which stage failed, not just "mismatch"
    assert all(
        r["ok"] for r in report["checks"] if r["check"].startswith(("names", "shapes", "provider"))
    )
    assert "Parity FAILED" in result.stderr and "values cpu real" in result.stderr
    md = Path("exports/perturbed.parity.md").read_text()
    assert "FAIL" in md and "Largest difference" in md


def test_a_value_check_is_one_registered_function(cli, exported, monkeypatch):
    """Adding a validate check is one decorated function: every input set gets its row, the
    report and the verdict follow."""
    from dlpipe.export import compare

    monkeypatch.setattr(compare, "VALUE_CHECKS", list(compare.VALUE_CHECKS))

    @compare.value_check
    def _no_negative_logits(c: compare.Compared) -> dict:
        worst = float(c.got.min())
        return compare.check(f"sign {c.tag}", worst >= 0, f"min {worst:.3g}", "logits below 0")

    result = cli("validate", str(exported), "--providers", "cpu", "--latency-runs", "0",
                 "--n", "8", "--json")  # fmt: skip
    report = parse_json(result.stdout)["parity"]
    rows = [r for r in report["checks"] if r["check"].startswith("sign ")]
    assert rows and {r["check"] for r in rows} >= {"sign cpu real"}
    assert result.exit_code == (0 if all(r["ok"] for r in rows) else 1)
    assert report["passed"] == all(r["ok"] for r in report["checks"])


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is installed"
)
def test_unavailable_provider_fails_with_its_reason(cli, exported):
    result = cli(
        "validate",
        str(exported),
        "--providers",
        "cpu,cuda",
        "--latency-runs",
        "0",
        "--n",
        "4",
        "--json",
    )
    assert result.exit_code == 3  # this machine lacks the provider; the file itself is fine
    report = parse_json(result.stdout)["parity"]
    cuda = next(p for p in report["providers"] if p["name"] == "cuda")
    assert not cuda["ok"] and "CUDAExecutionProvider is not in this onnxruntime" in cuda["reason"]
    cpu_checks = [r for r in report["checks"] if " cpu" in r["check"]]
    assert cpu_checks and all(r["ok"] for r in cpu_checks)  # CPU still validated and passed
    # the advice fits the install: the CPU build is swapped by make install-gpu, torch untouched
    assert "make install-gpu" in result.stderr and "torch stays" in result.stderr
    assert "Traceback" not in result.output and "\x1b[" not in result.output


def test_latency_and_tolerance_override(cli, exported):
    result = cli("validate", str(exported), "--providers", "cpu", "--latency-runs", "2", "--n", "8",
                 "--inputs", "random", "--batch-sizes", "2,5", "--atol", "1e-3", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)["parity"]
    assert report["tolerance"]["atol"] == 1e-3 and "overridden" in report["tolerance"]["source"]
    assert [r["batch"] for r in report["latency"]] == [1, 5]
    assert all(
        r["onnx"]["median_ms"] > 0 and r["torch_eager"]["device"] == "cpu"
        for r in report["latency"]
    )


def test_bad_files_get_clear_errors(cli, tmp_path):
    Path("junk.onnx").write_bytes(b"\x00\x01this is not a protobuf model" * 10)
    Path("empty.onnx").write_bytes(b"")
    Path("text.onnx").write_text("hello")
    for name in ("junk.onnx", "empty.onnx", "text.onnx", "missing.onnx"):
        for cmd in (["validate"], ["inspect"]):
            result = cli(*cmd, name)
            assert result.exit_code == 2, (cmd, name, result.output)
            assert name in result.stderr and "Traceback" not in result.output


def test_onnx_without_dlpipe_metadata(cli, tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), "plain.onnx")
    result = cli("validate", "plain.onnx")
    assert result.exit_code == 2 and "no dlpipe metadata" in result.stderr
    info = parse_json(cli("inspect", "plain.onnx", "--json").stdout)
    assert info["metadata"] is None and info["operators"] == {"Relu": 1}


def test_against_other_checkpoint_is_noted(cli, exported, tmp_path, image_folder):
    from dlpipe.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint("runs/finetune/tiny/checkpoints/last.safetensors")
    weights = {k: v.clone() for k, v in ckpt.weights["model"].items()}
    weights["head.bias"] += 1.0
    save_checkpoint(tmp_path / "other.safetensors", {"model": weights}, ckpt.meta)
    result = cli("validate", str(exported), "--against", tmp_path / "other.safetensors", "--providers", "cpu",
                 "--latency-runs", "0", "--n", "4", "--json")  # fmt: skip
    assert result.exit_code == 1
    report = parse_json(result.stdout)["parity"]
    assert any("sha256 differs" in n for n in report["notes"])
    assert json.loads(Path("exports/tiny.parity.json").read_text())["passed"] is False


@pytest.mark.gpu
def test_cuda_provider_runs_with_cuda_reference(cli, exported):
    torch = pytest.importorskip("torch")
    if (
        not torch.cuda.is_available()
        or "CUDAExecutionProvider" not in ort.get_available_providers()
    ):
        pytest.skip("needs a CUDA device and onnxruntime-gpu")
    result = cli(
        "validate",
        str(exported),
        "--providers",
        "cuda",
        "--n",
        "8",
        "--latency-runs",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)["parity"]
    assert report["providers"][0]["active"][0] == "CUDAExecutionProvider"
    assert report["latency"][0]["torch_eager"]["device"] == "cuda"
