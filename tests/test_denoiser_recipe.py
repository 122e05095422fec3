"""The U-Net denoiser's defaults (issue 12: width 16, batch 8, SiLU, lr/10 in the last fifth of
the epochs) and the files written before them: a resumed or exported pre-SiLU run keeps the
LeakyReLU and the width its weights have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from torch import nn

from dlpipe.checkpoint import load_checkpoint, save_checkpoint
from dlpipe.config import AeConfig
from dlpipe.errors import BadInput
from dlpipe.models.autoencoder import build_from_meta
from tests.conftest import parse_json

CK = Path("runs/ae/r/checkpoints/last.safetensors")


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    """40 gray 16x16 images: a bright square on black."""
    root = tmp_path / "blobs"
    root.mkdir()
    for i in range(40):
        img = np.zeros((16, 16), np.uint8)
        img[i % 10 : i % 10 + 5, 3:9] = 200
        Image.fromarray(img).save(root / f"{i}.png")
    return root


def _acts(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, nn.SiLU | nn.LeakyReLU)}


def test_defaults_follow_the_net_and_given_values_win():
    unet = AeConfig(noise="gaussian:0.3").resolved()
    assert (unet.net, unet.width, unet.batch_size) == ("unet", 16, 8)
    conv = AeConfig().resolved()  # no noise: the compressing autoencoder keeps 32 / 64
    assert (conv.net, conv.width, conv.batch_size) == ("conv", 32, 64)
    given = AeConfig(noise="0.3", width=24, batch_size=40).resolved()
    assert (given.width, given.batch_size) == (24, 40)


def test_the_unet_anneals_its_last_fifth_of_epochs_and_the_conv_ae_does_not():
    unet = AeConfig(noise="0.3", epochs=15, lr=1e-3)
    assert [unet.lr_at(e) for e in (1, 12, 13, 15)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert AeConfig(noise="0.3", epochs=2).lr_at(2) == 2e-3  # too short to anneal
    assert AeConfig(epochs=15).lr_at(15) == 2e-3  # conv


def test_a_fresh_denoiser_records_its_recipe(cli, blobs):
    res = cli("ae", "train", "--data", blobs, "--noise", "0.3", "--epochs", "1", "--name", "r",
              "--json", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    run = Path(parse_json(res.stdout)["run_dir"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["width"], saved["batch_size"]) == (16, 8)  # numbers, not None: resumes keep them
    ck = load_checkpoint(CK)
    assert ck.meta["arch"]["width"] == 16 and ck.meta["arch"]["act"] == "silu"
    assert ck.state["step"] == 4  # 32 training images in batches of 8
    assert _acts(build_from_meta(ck.meta)) == {nn.SiLU}


def test_a_run_from_before_silu_resumes_and_exports_with_its_leaky_relu(cli, blobs):
    args = ["--data", blobs, "--noise", "0.3", "--name", "r", "--json", "--quiet"]
    first = cli("ae", "train", *args, "--epochs", "1", "--width", "8", "--batch-size", "32")
    assert first.exit_code == 0, first.output
    ck = load_checkpoint(CK)  # made into a file of the previous dlpipe: its arch has no "act"
    ck.meta["arch"].pop("act")
    save_checkpoint(CK, ck.weights, ck.meta, ck.state)
    old = build_from_meta(ck.meta)
    assert _acts(old) == {nn.LeakyReLU}
    old.load_state_dict(ck.weights["model"])  # same tensor names as the SiLU net

    res = cli("ae", "train", "--resume", "--name", "r", "--epochs", "2", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(CK)
    assert ck.state["epoch"] == 2 and ck.state["step"] == 2  # batch 32 kept: 1 step an epoch
    assert ck.meta["arch"]["act"] == "leaky" and ck.meta["arch"]["width"] == 8
    assert _acts(build_from_meta(ck.meta)) == {nn.LeakyReLU}


def test_an_unknown_activation_is_a_clear_error():
    arch = {"net": "unet", "image_size": 16, "channels": 1, "width": 4, "act": "mish"}
    with pytest.raises(BadInput, match="activation 'mish'"):
        build_from_meta({"arch": arch})
