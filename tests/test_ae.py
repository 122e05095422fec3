"""`dlpipe ae train` end to end on tiny real images; U-Net and conv models; noise specs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dlpipe.checkpoint import load_checkpoint
from dlpipe.errors import BadInput
from dlpipe.models import build_from_meta
from dlpipe.models.autoencoder import AutoEncoder
from dlpipe.models.unet import UNet, unet_depth
from dlpipe.noise import add_noise, parse_noise
from tests.conftest import parse_json

TINY = ["--latent", "8", "--width", "4", "--batch-size", "8", "--quiet", "--lr", "3e-3"]


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (16, 1), (64, 3)])
def test_shapes_and_separable_parts(size, channels):
    ae = AutoEncoder(latent=10, image_size=size, channels=channels, width=4)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        z = ae.encoder(x)
        y = ae.decoder(z)
        torch.testing.assert_close(ae(x), y)
    assert z.shape == (2, 10)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_shapes_depth_and_identity_start(size, channels):
    net = UNet(image_size=size, channels=channels, width=4)
    assert net.depth == {28: 2, 32: 3, 64: 4}[size] == unet_depth(size)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        assert net(x).shape == x.shape
        torch.testing.assert_close(net(x), x)  # zero last conv: starts as the identity
        net.out.weight.normal_()
        y = net(x)
    assert 0 <= float(y.min()) and float(y.max()) <= 1 and not torch.equal(y, x)
    assert unet_depth(8) == 1 and unet_depth(7) == 0 and unet_depth(16) == 2


def test_noise_specs():
    assert parse_noise("gaussian:0.3") == ("gaussian", 0.3)
    assert parse_noise("0.3") == ("gaussian", 0.3)
    assert parse_noise(None) is None and parse_noise("none") is None
    for bad in ("gauss:0.3", "mask:1.5", "saltpepper:x", "gaussian:-1"):
        with pytest.raises(BadInput, match="--noise"):
            parse_noise(bad)
    x = torch.full((4, 1, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    masked = add_noise(x, ("mask", 0.25), g)
    assert float((masked == 0).float().mean()) == pytest.approx(0.25, abs=0.03)
    sp = add_noise(x, ("saltpepper", 0.1), g)
    assert float((sp != 0.5).float().mean()) == pytest.approx(0.1, abs=0.02)
    gauss = add_noise(x, ("gaussian", 0.1), g)
    assert float((gauss - x).std()) == pytest.approx(0.1, rel=0.05) and gauss.max() <= 1


def test_a_noise_kind_is_one_registered_function(monkeypatch):
    """Adding a kind is one decorated function: parsing, applying and --help follow from it."""
    from dlpipe import noise

    monkeypatch.setattr(noise, "KINDS", dict(noise.KINDS))

    @noise.kind("invert", "SHARE", 0.5, 1.0, "that share of pixels inverted")
    def _invert(x, level, draw):
        return torch.where(draw("uniform") < level, 1.0 - x, x)

    assert parse_noise("invert:0.5") == ("invert", 0.5)
    with pytest.raises(BadInput, match="--noise") as bad:
        parse_noise("invert:2")
    assert "invert:SHARE (that share of pixels inverted, at most 1)" in bad.value.hint
    x = torch.zeros(2, 1, 16, 16)
    flipped = add_noise(x, ("invert", 0.5), torch.Generator().manual_seed(0))
    assert float(flipped.mean()) == pytest.approx(0.5, abs=0.08)
    assert noise.spec_help().endswith("or invert:SHARE")


def test_every_noise_kind_is_in_help_and_readme():
    from dlpipe import noise
    from dlpipe.config import AeConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(AeConfig)}["noise"]
    for k in noise.KINDS.values():
        assert f"{k.name}:{k.level}" in help_text
        assert f"| `{k.name}:" in readme, f"README's --noise table lacks {k.name}"


def test_denoising_train_cli_json_metrics_and_contract(cli, stripes):
    res = cli("ae", "train", "--data", stripes, "--noise", "gaussian:0.3", "--epochs", "4",
              "--test-fraction", "0.2", "--json", *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    result = parse_json(res.stdout)
    m = result["metrics"]
    for key in ("psnr_db", "ssim", "noisy_psnr_db", "psnr_gain_db"):
        assert np.isfinite(m[key]), key
    assert m["psnr_gain_db"] == pytest.approx(m["psnr_db"] - m["noisy_psnr_db"])
    run = Path(result["run_dir"])
    for name in ("checkpoint", "reconstructions", "curves", "metrics_csv"):
        assert Path(result["artifacts"][name]).exists()
    assert (run / "samples" / "epoch_004.png").exists()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and "val_psnr_db" in rows[0]
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert losses[-1] < losses[0]  # it learns
    ck = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert (ck.meta["command"], ck.meta["kind"], ck.meta["export_group"]) == (
        "ae",
        "autoencoder",
        "model",
    )
    # --noise without --arch: the U-Net denoiser
    arch = {"net": "unet", "image_size": 16, "channels": 1, "width": 4, "output": "clamp"}
    assert ck.meta["arch"] == {**arch, "depth": 2, "act": "silu"} and "latent" not in ck.meta["io"]
    assert ck.meta["metrics"]["psnr_gain_db"] == pytest.approx(m["psnr_gain_db"])
    assert m["psnr_gain_db"] > 0  # it denoises
    model = build_from_meta(ck.meta)
    assert isinstance(model, UNet)
    model.load_state_dict(ck.weights["model"])


def test_eval_limit_caps_the_images_evaluated(cli, stripes):
    """--eval-limit: a large held-out split is evaluated on N images, the same N every epoch."""
    res = cli("ae", "train", "--data", stripes, "--noise", "0.3", "--epochs", "1",
              "--test-fraction", "0.5", "--val-fraction", "0.2", "--eval-limit", "5", "--json",
              *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    m = parse_json(res.stdout)["metrics"]
    assert m["heldout_images"] == 5 and np.isfinite(m["psnr_gain_db"])
    full = cli("ae", "train", "--data", stripes, "--noise", "0.3", "--epochs", "1",
               "--test-fraction", "0.5", "--val-fraction", "0.2", "--json", *TINY)  # fmt: skip
    assert parse_json(full.stdout)["metrics"]["heldout_images"] == 20


def test_conv_denoiser_keeps_its_parts(cli, stripes):
    res = cli("ae", "train", "--data", stripes, "--noise", "gaussian:0.3", "--arch", "conv",
              "--epochs", "1", "--json", *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(Path(parse_json(res.stdout)["run_dir"]) / "checkpoints/last.safetensors")
    assert ck.meta["arch"] == {"net": "conv", "latent": 8, "image_size": 16, "channels": 1,
                               "width": 4, "output": "clamp"}  # fmt: skip
    model = build_from_meta(ck.meta)
    model.load_state_dict(ck.weights["model"])
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(model.decoder(model.encoder(x)), model(x))


def test_unet_exports_full_validates_and_refuses_parts(cli, stripes):
    run = "runs/ae/u"
    res = cli("ae", "train", "--data", stripes, "--noise", "gaussian:0.2", "--epochs", "1",
              "--name", "u", *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = cli("export", run, "--exporter", "torchscript", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    model = parse_json(res.stdout)["model"]
    res = cli("validate", model, "--providers", "cpu", "--n", "8", "--latency-runs", "1",
              "--json", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = parse_json(res.stdout)["parity"]
    assert report["passed"] and report["inputs"][0]["name"] == "real"
    res = cli("predict", model, stripes, "--out", "recon", "--json")
    assert res.exit_code == 0 and len(list(Path("recon").glob("*.png"))) == 40
    for part in ("encoder", "decoder"):
        res = cli("export", run, "--part", part, "--exporter", "torchscript")
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "U-Net" in text and "--part full" in text, text
        assert not list(Path("exports").glob(f"*{part}*"))


def test_resume_and_plain_autoencoder(cli, stripes):
    args = ["ae", "train", "--data", stripes, "--name", "r", *TINY]
    assert cli(*args, "--epochs", "1").exit_code == 0
    res = cli("ae", "train", "--resume", "--name", "r", "--epochs", "2", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    m = parse_json(res.stdout)["metrics"]
    assert m["epochs"] == 2 and "psnr_gain_db" not in m and m["psnr_db"] > 0
    ck = load_checkpoint(Path("runs/ae/r/checkpoints/last.safetensors"))
    assert ck.state["epoch"] == 2 and ck.state["step"] == 2 * 4  # 32 training images, batch 8


def test_bad_noise_is_exit_2(cli, stripes):
    res = cli("ae", "train", "--data", stripes, "--noise", "blur:2", *TINY)
    assert res.exit_code == 2 and "--noise" in res.stderr
    res = cli("ae", "train", "--data", stripes, "--arch", "resnet", *TINY)
    assert res.exit_code == 2 and "'resnet' is not one of" in " ".join(res.stderr.split())
    assert not Path("runs/ae").exists() or not any(Path("runs/ae").iterdir())
