"""`dlpipe export` (+ `--validate`): round trips for every kind, metadata, overwrite protection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from tests.conftest import parse_json
from tests.test_export_helpers import (
    tiny_builders,  # noqa: F401 - fixture
    write_autoencoder_run,
    write_classifier_run,
    write_generator_run,
)

pytestmark = pytest.mark.usefixtures("tiny_builders")
FAST = ("--latency-runs", "1", "--n", "16")


def _export(cli, *args: str):
    result = cli("export", *args, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return parse_json(result.stdout)


def _validate(cli, model: str, *args: str):
    return cli("validate", model, "--providers", "cpu", *FAST, "--json", "--quiet", *args)


def test_classifier_roundtrip_metadata_and_parity(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    out = _export(cli, run, "--exporter", "torchscript")
    model = Path(out["model"])
    assert model == Path("exports/tiny.onnx") and model.exists()
    assert out["exporter"] == {"used": "torchscript", "requested": "torchscript"}
    # metadata round trip: in the file and in the sidecar, identical
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["dlpipe"])
    assert meta == json.loads(Path(out["artifacts"]["metadata"]).read_text())
    assert (
        meta["class_names"] == ["bird", "cat", "dog"]
        and json.loads(props["class_names"]) == meta["class_names"]
    )
    assert meta["preprocess"]["mean"] == [0.5, 0.4, 0.3] and meta["preprocess"]["crop"] == 16
    assert meta["input"] == {
        "name": "image",
        "kind": "image",
        "shape": ["batch", 3, 16, 16],
        "dtype": "float32",
    }
    assert len(meta["source"]["sha256"]) == 64 and meta["versions"]["torch"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    # parity at batch sizes 1, 3 and 8 on real held-out images and random ones
    result = _validate(cli, str(model))
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)["parity"]
    assert report["passed"] and {s["name"] for s in report["inputs"]} == {"real", "random"}
    checks = {r["check"]: r for r in report["checks"]}
    for bs in (1, 3, 8):
        assert checks[f"shapes cpu real batch {bs}"]["ok"]
    assert checks["values cpu real"]["stats"]["max_abs"] < 1e-4
    assert checks["top-1 cpu real"]["top1_agreement"] == 1.0
    assert (
        Path("exports/tiny.parity.json").exists()
        and "PASS" in Path("exports/tiny.parity.md").read_text()
    )


def test_dynamo_external_data_and_overwrite_protection(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    out = _export(cli, run, "--exporter", "auto", "--external-data", "--out", "exports/ext.onnx")
    assert out["exporter"]["used"] == "dynamo"
    data = Path(out["artifacts"]["external_data"])
    assert re.fullmatch(r"ext\.onnx\.[0-9a-f]{16}\.data", data.name) and data.stat().st_size > 0
    assert data.stat().st_mode & 0o777 == Path("exports/ext.onnx").stat().st_mode & 0o777
    onnx.checker.check_model("exports/ext.onnx", full_check=True)
    assert _validate(cli, "exports/ext.onnx", "--inputs", "real").exit_code == 0
    # never overwrite without --force; nothing changes on refusal
    before = Path("exports/ext.onnx").stat().st_mtime_ns
    refused = cli("export", run, "--out", "exports/ext.onnx")
    assert refused.exit_code == 2 and "--force" in refused.output
    assert Path("exports/ext.onnx").stat().st_mtime_ns == before
    # --force to a single file removes the stale external data
    _export(cli, run, "--out", "exports/ext.onnx", "--force", "--exporter", "torchscript")
    assert not data.exists()
    assert not [p for p in Path("exports").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_generator_roundtrip(cli, tmp_path):
    run = write_generator_run(tmp_path)
    out = _export(cli, run, "--exporter", "torchscript", "--validate")
    report = out["parity"]
    assert report["passed"], report
    assert out["model"] == "exports/tiny.onnx"
    meta = json.loads(Path("exports/tiny.json").read_text())
    assert (
        meta["input"]["name"] == "z"
        and meta["latent_size"] == 8
        and meta["output"]["name"] == "image"
    )
    assert any(r["check"].startswith("psnr cpu latent") and r["ok"] for r in report["checks"])


@pytest.mark.parametrize(
    ("part", "io"),
    [
        ("full", ("image", "reconstruction")),
        ("encoder", ("image", "latent")),
        ("decoder", ("latent", "image")),
    ],
)
def test_autoencoder_parts_roundtrip(cli, tmp_path, part, io):
    run = write_autoencoder_run(tmp_path)
    out = _export(cli, run, "--part", part, "--exporter", "torchscript")
    assert out["model"] == ("exports/tiny.onnx" if part == "full" else f"exports/tiny-{part}.onnx")
    session = ort.InferenceSession(out["model"], providers=["CPUExecutionProvider"])
    assert (session.get_inputs()[0].name, session.get_outputs()[0].name) == io
    result = _validate(cli, out["model"], "--inputs", "real")
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)["parity"]
    assert "digits" in report["inputs"][0]["note"]


def test_with_preprocess_and_softmax(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    out = _export(cli, run, "--with-preprocess", "--softmax", "--exporter", "torchscript")
    session = ort.InferenceSession(out["model"], providers=["CPUExecutionProvider"])
    assert (
        session.get_inputs()[0].name == "pixels"
        and session.get_outputs()[0].name == "probabilities"
    )
    assert _validate(cli, out["model"]).exit_code == 0
    pred = cli("predict", out["model"], str(image_folder / "dog"), "--json", "--top-k", "2")
    assert pred.exit_code == 0, pred.output
    rows = parse_json(pred.stdout)["predictions"]
    assert len(rows) == 6 and all(
        abs(sum(t["probability"] for t in r["top"]) - 1) < 1.0 for r in rows
    )


def test_bad_options_are_usage_errors(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    assert "--part" in cli("export", run, "--part", "encoder").output
    assert cli("export", run, "--part", "encoder").exit_code == 2
    assert cli("export", run, "--exporter", "tensorflow").exit_code == 2
    assert cli("export", tmp_path / "nope").exit_code == 2
    assert cli("export", run, "--out", "model.txt").exit_code == 2
