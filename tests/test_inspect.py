"""`dlpipe inspect`: metadata, I/O, opset, size and operator histogram of an exported file."""

from __future__ import annotations

import pytest

from tests.conftest import parse_json
from tests.test_export_helpers import tiny_builders, write_classifier_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("tiny_builders")


def test_inspect_json_and_human(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    assert (
        cli("export", run, "--exporter", "torchscript", "--opset", "17", "--quiet").exit_code == 0
    )
    info = parse_json(cli("inspect", "exports/tiny.onnx", "--json").stdout)
    assert info["opset"]["ai.onnx"] == 17 and info["producer"].startswith("dlpipe")
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert info["outputs"][0]["name"] == "logits" and info["outputs"][0]["shape"][0] == "batch"
    assert info["operators"]["Conv"] == 2 and info["size_bytes"] > 1000
    meta = info["metadata"]
    assert (
        meta["kind"] == "classifier"
        and meta["exporter"]["used"] == "torchscript"
        and meta["opset"] == 17
    )

    human = cli("inspect", "exports/tiny.onnx")
    assert human.exit_code == 0
    for text in ("classifier", "bird, cat, dog", "Conv", "logits", "sha256", "opset"):
        assert text in human.stdout, text
