"""Round trips through the REAL training commands at tiny sizes: train -> export -> validate.

Classifiers with a torchvision and a timm backbone (`dlpipe finetune`), a DCGAN generator
(`dlpipe gan train`) and an autoencoder in full and in parts (`dlpipe ae train`). Each is skipped
only while its training command's module is not in the tree.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import parse_json

VALIDATE = ("--providers", "cpu", "--n", "8", "--latency-runs", "1", "--json", "--quiet")


def _needs(module: str) -> pytest.MarkDecorator:
    found = importlib.util.find_spec(module) is not None
    return pytest.mark.skipif(not found, reason=f"{module} is not in the tree yet")


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DLPIPE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLPIPE_CACHE_DIR", str(tmp_path / "cache"))


def _train(cli, *args: str) -> Path:
    res = cli(*args, "--json", "--quiet")
    assert res.exit_code == 0, res.output
    return Path(parse_json(res.stdout)["run_dir"])


def _export_and_validate(cli, run: Path, *export_args: str) -> dict:
    res = cli("export", run, "--json", "--quiet", *export_args)
    assert res.exit_code == 0, res.output
    model = parse_json(res.stdout)["model"]
    res = cli("validate", model, *VALIDATE)
    assert res.exit_code == 0, res.output
    report = parse_json(res.stdout)["parity"]
    assert report["passed"] and [s["name"] for s in report["inputs"]][0] in ("real", "latent")
    for bs in (1, 3, 8):
        assert any(r["check"].endswith(f"batch {bs}") and r["ok"] for r in report["checks"])
    return report


@_needs("dlpipe.models.backbones")
@pytest.mark.parametrize(
    ("backbone", "exporter"),
    [("mobilenet_v2", "torchscript"), ("timm/test_efficientnet", "auto")],  # dynamo: ~10 s for mnv2
)
def test_finetune_classifier_roundtrip(cli, backbone, exporter):
    run = _train(cli, "finetune", "--backbone", backbone, "--weights", "none", "--data", "digits",
                 "--image-size", "32", "--limit", "40", "--eval-limit", "20", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--name", "rt")  # fmt: skip
    report = _export_and_validate(cli, run, "--exporter", exporter)
    meta = json.loads(Path("exports/rt.json").read_text())
    assert meta["exporter"]["used"] == ("dynamo" if exporter == "auto" else exporter)
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["preprocess"]["resize"] == 32
    assert meta["arch"]["backbone"] == backbone
    assert any(
        r["check"] == "top-1 cpu real" and r["top1_agreement"] == 1.0 for r in report["checks"]
    )


def _blobs(root: Path, n: int = 16, size: int = 16) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(4, size - 4, 2)
        img = (((yy - cy) ** 2 + (xx - cx) ** 2) < 10).astype(np.uint8) * 220 + 20
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


@_needs("dlpipe.models.dcgan")
def test_gan_generator_roundtrip(cli, tmp_path):
    data = _blobs(tmp_path / "blobs")
    run = _train(cli, "gan", "train", "--data", data, "--epochs", "1", "--fd-every", "0", "--nz", "8",
                 "--ngf", "4", "--ndf", "4", "--batch-size", "8", "--image-size", "28", "--name", "g")  # fmt: skip
    report = _export_and_validate(cli, run)
    assert report["kind"] == "generator" and report["inputs"][0]["name"] == "latent"
    meta = json.loads(Path("exports/g.json").read_text())
    assert meta["input"]["name"] == "z" and meta["latent_size"] == 8


@_needs("dlpipe.models.autoencoder")
def test_autoencoder_full_and_parts_roundtrip(cli, tmp_path):
    data = _blobs(tmp_path / "blobs", n=24)
    run = _train(cli, "ae", "train", "--data", data, "--epochs", "1", "--latent", "8", "--width", "4",
                 "--batch-size", "8", "--name", "a")  # fmt: skip
    for part in ("full", "encoder", "decoder"):
        report = _export_and_validate(cli, run, "--part", part)
        assert report["part"] == part
    res = cli("predict", "exports/a.onnx", data, "--out", "recon", "--json")
    assert res.exit_code == 0 and len(list(Path("recon").glob("*.png"))) == 24
