"""DCGAN architecture, initialisation, EMA and BatchNorm recalibration (no training data needed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dlpipe.errors import BadInput
from dlpipe.models import build_from_meta
from dlpipe.models.dcgan import Discriminator, Generator, build_generator, init_weights, stages
from dlpipe.train.gan.evaluate import bn_gap, ema_update, export_generator, recalibrate_bn


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_follow_size_and_channels(size, channels):
    g = Generator(nz=16, ngf=8, image_size=size, channels=channels)
    d = Discriminator(ndf=8, image_size=size, channels=channels)
    x = g(torch.randn(3, 16))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output
    assert d(x).shape == (3,)


def test_stages_and_bad_size():
    assert stages(28) == (7, 2) and stages(32) == (4, 3) and stages(64) == (4, 4)
    with pytest.raises(BadInput, match="image-size"):
        stages(30)


def test_dcgan_guidelines_no_bias_no_bn_at_ends():
    g, d = Generator(16, 8, 32, 3), Discriminator(8, 32, 3)
    convs = [
        m for m in [*g.modules(), *d.modules()] if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    assert all(c.bias is None for c in convs)
    assert isinstance(g.main[-1], nn.Tanh) and isinstance(g.main[-2], nn.ConvTranspose2d)
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2  # no BN on input
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in [*g.modules(), *d.modules()])


def test_init_distribution():
    g = Generator(nz=64, ngf=64, image_size=64, channels=3)
    init_weights(g)
    w = torch.cat(
        [m.weight.detach().flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    )
    assert abs(float(w.mean())) < 1e-3
    assert float(w.std()) == pytest.approx(0.02, rel=0.03)
    bn = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert float(bn.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(bn.std()) == pytest.approx(0.02, rel=0.2)


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    model, ema = nn.Linear(4, 3), nn.Linear(4, 3)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, decay=0.9, step=10**6)  # warm-up no longer limits the decay
    for e, b, m in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * m.detach())
    ema_update(ema, model, decay=0.999, step=0)  # warm-up: decay (1+0)/(10+0) = 0.1
    for e, m in zip(ema.parameters(), model.parameters(), strict=True):
        assert torch.allclose(e, m, atol=1.0)


def test_bn_recalibration_fixes_eval_mode():
    torch.manual_seed(0)
    arch = {"nz": 16, "ngf": 8, "image_size": 16, "channels": 1}
    g = build_generator(arch)
    for m in g.modules():  # running statistics that no longer match the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(50.0)
    assert bn_gap(g, 16, "cpu") > 0.04
    weights = copy.deepcopy(g.state_dict())
    exported, report = export_generator(g, 16, "cpu")
    assert report["bn_recalibrated"] and report["bn_gap_after"] < 0.02 < report["bn_gap_before"]
    assert not exported.training
    # the source generator is untouched; recalibration changes buffers only, not weights
    for k, v in g.state_dict().items():
        torch.testing.assert_close(v, weights[k])
    recalibrate_bn(g, 16, "cpu")
    assert bn_gap(g, 16, "cpu") < 0.02


def test_build_from_meta_contract():
    meta = {"kind": "generator", "arch": {"nz": 8, "ngf": 4, "image_size": 28, "channels": 1}}
    g = build_from_meta(meta)
    assert not g.training and g(torch.randn(2, 8)).shape == (2, 1, 28, 28)


class _Recorder:
    def __init__(self):
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def _state(collapse_steps: int = 5):
    from dlpipe.config import GanConfig
    from dlpipe.train.gan.loop import GanState

    cfg = GanConfig(collapse_steps=collapse_steps)
    arch = {"nz": 8, "ngf": 4, "ndf": 4, "image_size": 16, "channels": 1}
    g, d = build_generator(arch), Discriminator(4, 16, 1)
    opt = torch.optim.Adam(g.parameters())
    return GanState(cfg, arch, "cpu", g, d, opt, opt, None, torch.zeros(1, 8))


def test_collapse_warning_once_after_streak():
    from dlpipe.train.gan.loop import _check_step

    s, out = _state(collapse_steps=5), _Recorder()
    for i in range(4):
        _check_step(s, [0.01, 9.0, 0.999, 0.001], 3, i, out)
    _check_step(s, [0.5, 1.0, 0.7, 0.3], 3, 4, out)  # a normal step resets the streak
    for i in range(12):
        _check_step(s, [0.01, 9.0, 0.999, 0.001], 3, 5 + i, out)
    assert len(out.warnings) == 1 and "--ndf" in out.warnings[0] and "epoch 3" in out.warnings[0]


def test_injected_nan_names_epoch_and_step():
    from dlpipe.errors import Diverged
    from dlpipe.train.gan.loop import _check_step

    s = _state()
    s.step = 41
    with pytest.raises(
        Diverged, match=r"loss_g became NaN/Inf at epoch 2, step 7 .*global step 42"
    ):
        _check_step(s, [0.5, float("nan"), 0.5, 0.5], 2, 6, _Recorder())
    with pytest.raises(Diverged, match="loss_d"):
        _check_step(s, [float("inf"), 1.0, 0.5, 0.5], 2, 0, _Recorder())
