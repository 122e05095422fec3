"""`dlpipe gan train|sample` end to end on tiny real images: CLI, checkpoints, resume, NaN, ONNX."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dlpipe.checkpoint import load_checkpoint, save_checkpoint
from dlpipe.models import build_from_meta
from tests.conftest import parse_json

TINY = ["--nz", "8", "--ngf", "4", "--ndf", "4", "--batch-size", "8", "--quiet"]


def _blob_folder(root: Path, n: int = 24, size: int = 16) -> Path:
    """A flat (unlabeled) folder of gray images: a bright disc at random places."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(4, size - 4, 2)
        img = (((yy - cy) ** 2 + (xx - cx) ** 2) < 10).astype(np.uint8) * 220 + 20
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


def _train(cwd: Path, *args: str):
    import os

    from dlpipe.cli import app

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, ["gan", "train", *args], catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny 2-epoch run with fd/kid every epoch, shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("gan")
    data = _blob_folder(base / "blobs")
    res = _train(base, "--data", str(data), "--epochs", "2", "--fd-every", "1",
                 "--fd-images", "8", "--name", "tiny", "--json", *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    (base / "result.json").write_text(res.stdout)
    return base


def test_a_run_too_short_for_a_dcgan_says_so_up_front(tmp_path):
    """A flat folder of a few photos for one epoch gives grey-noise grids: the run says why."""
    from dlpipe.config import GanConfig
    from dlpipe.train.gan import _warn_if_too_short

    said: list[str] = []

    class Out:
        def warn(self, message: str) -> None:
            said.append(message)

    _warn_if_too_short(GanConfig(epochs=1), 24, 64, Out())
    assert said and "1 generator steps on 24 images at 64 px" in said[0]
    _warn_if_too_short(GanConfig(epochs=15), 4500, 28, Out())  # the quickstart: no warning
    assert len(said) == 1
    res = _train(tmp_path, "--data", str(_blob_folder(tmp_path / "b")), "--epochs", "1",
                 "--fd-every", "0", *TINY)  # fmt: skip
    assert res.exit_code == 0 and "grey noise" in " ".join(res.stderr.split())


def test_train_json_metrics_and_artifacts(tiny_run):
    result = parse_json((tiny_run / "result.json").read_text())
    run = Path(tiny_run / result["run_dir"])
    m = result["metrics"]
    for key in ("fd_mobilenet_v2", "fd_mobilenet_v2_floor", "kid_mobilenet_v2", "loss_d", "d_x"):
        assert np.isfinite(m[key]), key
    assert m["fd_mobilenet_v2"] > 0 and m["epochs"] == 2
    for name in ("checkpoint", "samples", "progress", "curves", "metrics_csv"):
        assert Path(tiny_run / result["artifacts"][name]).exists(), name
    assert (run / "samples" / "epoch_001.png").exists() and (
        run / "samples" / "epoch_002.png"
    ).exists()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "loss_d", "loss_g", "d_x", "d_g_z", "fd_mobilenet_v2"} <= set(header)


def test_checkpoint_follows_contract(tiny_run):
    ck = load_checkpoint(tiny_run / "runs/gan/tiny/checkpoints/last.safetensors")
    meta = ck.meta
    assert (meta["command"], meta["kind"], meta["export_group"]) == (
        "gan",
        "generator",
        "generator",
    )
    assert meta["io"] == {"input": "z", "output": "image"}
    assert meta["arch"] | {} == meta["arch"] and meta["arch"]["image_size"] == 16
    assert meta["preprocess"]["mean"] == [0.5] and meta["data"]["test_fraction"] == 0.1
    g = build_from_meta(meta)
    g.load_state_dict(ck.weights["generator"])  # strict: names and shapes match
    assert {"discriminator", "g_train"} <= set(ck.weights) and "opt_d" in ck.state
    assert g(torch.randn(2, 8)).shape == (2, 1, 16, 16)


def test_resume_continues_from_saved_step(tmp_path):
    data = _blob_folder(tmp_path / "blobs")
    common = ["--data", str(data), "--fd-every", "0", *TINY]
    assert _train(tmp_path, *common, "--epochs", "1", "--name", "a").exit_code == 0
    steps_per_epoch = load_checkpoint(tmp_path / "runs/gan/a/checkpoints/last.safetensors").state[
        "step"
    ]
    res = _train(tmp_path, "--resume", "--name", "a", "--epochs", "2", "--quiet")
    assert res.exit_code == 0, res.output
    resumed = load_checkpoint(tmp_path / "runs/gan/a/checkpoints/last.safetensors")
    assert resumed.state["step"] == 2 * steps_per_epoch and resumed.state["epoch"] == 2
    rows = (tmp_path / "runs/gan/a/metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    # an uninterrupted 2-epoch run ends with the same weights: the RNG and optimizers were restored
    assert _train(tmp_path, *common, "--epochs", "2", "--name", "b").exit_code == 0
    straight = load_checkpoint(tmp_path / "runs/gan/b/checkpoints/last.safetensors")
    for k, v in straight.weights["g_train"].items():
        torch.testing.assert_close(resumed.weights["g_train"][k], v)


def test_resume_keeps_the_channels_of_a_run_begun_under_an_older_size_rule(tmp_path):
    """A config.yaml that leaves ngf/ndf to the default (None) resumes with the checkpoint's
    shapes, not with whatever today's size rule would pick."""
    import yaml

    data = _blob_folder(tmp_path / "blobs")
    common = ["--data", str(data), "--fd-every", "0", "--nz", "8", "--batch-size", "8"]
    assert _train(tmp_path, *common, "--ngf", "4", "--ndf", "6", "--epochs", "1", "--name", "old",
                  "--quiet").exit_code == 0  # fmt: skip
    config = tmp_path / "runs/gan/old/config.yaml"
    saved = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump(saved | {"ngf": None, "ndf": None}))  # as an old default run
    res = _train(tmp_path, "--resume", "--name", "old", "--epochs", "2", "--quiet")
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(tmp_path / "runs/gan/old/checkpoints/last.safetensors")
    assert ck.state["epoch"] == 2 and (ck.meta["arch"]["ngf"], ck.meta["arch"]["ndf"]) == (4, 6)
    assert ck.weights["discriminator"]["main.0.weight"].shape[0] == 6


def test_nan_stops_naming_epoch_and_step_and_keeps_checkpoint(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "runs", tmp_path / "runs")
    path = tmp_path / "runs/gan/tiny/checkpoints/last.safetensors"
    ck = load_checkpoint(path)
    first = "main.0.weight"  # the first convolution of D
    ck.weights["discriminator"][first] = torch.full_like(
        ck.weights["discriminator"][first], float("nan")
    )
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "dlpipe_version")}
    save_checkpoint(path, ck.weights, meta, ck.state)  # a D poisoned with NaN: injected divergence
    before = path.read_bytes()
    res = _train(tmp_path, "--resume", "--name", "tiny", "--epochs", "3", "--quiet")
    assert res.exit_code == 1
    assert "epoch 3, step 1" in res.stderr and "NaN" in res.stderr
    assert path.read_bytes() == before


def test_sample_from_run_folder(tiny_run, cli):
    res = cli(
        "gan", "sample", str(tiny_run / "runs/gan/tiny"), "-n", "10", "--out", "g.png", "--json"
    )
    assert res.exit_code == 0, res.output
    info = parse_json(res.stdout)
    assert info["runtime"] == "torch" and info["images"] == 10
    assert Image.open("g.png").size == (4 * 18 + 2, 3 * 18 + 2)  # 4 columns, 3 rows, pad 2
    res = cli(
        "gan",
        "sample",
        str(tiny_run / "runs/gan/tiny"),
        "-n",
        "16",
        "--interpolate",
        "--out",
        "i.png",
    )
    assert res.exit_code == 0 and Image.open("i.png").size == (8 * 18 + 2, 2 * 18 + 2)


def test_sample_from_onnx_without_torch(tmp_path):
    from dlpipe.export.sample import latents, sample_onnx
    from dlpipe.models.dcgan import Generator, init_weights

    torch.manual_seed(0)
    g = Generator(nz=8, ngf=4, image_size=16, channels=3)
    init_weights(g)
    g.eval()
    onnx = tmp_path / "g.onnx"
    torch.onnx.export(
        g, (torch.randn(2, 8),), str(onnx), input_names=["z"], output_names=["image"],
        dynamic_axes={"z": {0: "n"}, "image": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    z = latents(5, 8, seed=3, interpolate=False)
    got = sample_onnx(onnx, lambda nz: latents(5, nz, seed=3, interpolate=False))
    np.testing.assert_allclose(got, g(torch.from_numpy(z)).detach().numpy(), atol=1e-5)
    code = (
        "import sys, json; from typer.testing import CliRunner; from dlpipe.cli import app;"
        f"r = CliRunner().invoke(app, ['gan', 'sample', {str(onnx)!r}, '-n', '6', '--out', 'o.png', '--json']);"
        "print(json.dumps({'code': r.exit_code, 'torch': 'torch' in sys.modules, 'out': r.stdout}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    report = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    assert report["torch"] is False
    assert parse_json(report["out"])["runtime"] == "onnxruntime"
    assert Image.open(tmp_path / "o.png").mode == "RGB"


def test_sample_rejects_non_generator_onnx(tmp_path, cli):
    lin = torch.nn.Linear(4, 2)
    torch.onnx.export(lin, (torch.randn(2, 4),), str(tmp_path / "c.onnx"),
                      input_names=["image"], output_names=["logits"], dynamo=False)  # fmt: skip
    res = cli("gan", "sample", str(tmp_path / "c.onnx"), "--out", "x.png")
    assert res.exit_code == 2 and "not a generator" in res.stderr
