"""Head replacement across families, weights loading checks, preprocessing from the model config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlpipe.errors import BadInput
from dlpipe.models.backbones import build_classifier, build_from_meta, parse_backbone
from dlpipe.weights import Resolved

# (backbone, layer that must have been replaced, input side)
FAMILIES = [
    ("resnet18", "fc", 32),
    ("densenet121", "classifier", 32),
    ("mobilenet_v3_small", "classifier.3", 32),
    ("vit_b_16", "heads.head", 32),
    ("squeezenet1_1", "classifier.1", 32),
    ("timm/resnet10t", "fc", 32),
    ("timm/test_vit", "head", 32),
    ("timm/test_convnext", "head.fc", 32),
    ("timm/test_efficientnet", "classifier", 32),
]


@pytest.mark.parametrize(("name", "replaced", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_head_replacement(name: str, replaced: str, size: int) -> None:
    torch.manual_seed(0)
    model, info = build_classifier(name, 7, head="linear", image_size=size)
    assert info["replaced"] == replaced
    model.eval()
    with torch.no_grad():
        feats = model.body(torch.randn(2, 3, size, size))
        logits = model(torch.randn(2, 3, size, size))
    assert feats.shape == (2, info["feature_size"])  # the reported feature size is the real one
    assert logits.shape == (2, 7)
    # no ImageNet classifier is left anywhere in the body
    assert not any(
        isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.body.modules()
    )


def test_mlp_head_puts_batchnorm_before_activation() -> None:
    model, _ = build_classifier("mnist_cnn", 3, head="mlp", hidden=16, dropout=0.2, in_chans=1)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert model.head[0].bias is None  # BatchNorm supplies the bias


def test_seed_cnn_with_batchnorm_has_bias_free_convs() -> None:
    plain, _ = build_classifier("mnist_cnn", 10, in_chans=1)
    bn, _ = build_classifier("mnist_cnn_bn", 10, in_chans=1)
    convs = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(BadInput) as exc:
        parse_backbone("densenet12")
    assert "densenet121" in exc.value.paragraph()
    with pytest.raises(BadInput) as exc:
        parse_backbone("timm/resnet18x")
    assert "timm/resnet18" in exc.value.paragraph()


def test_weights_for_another_architecture_are_refused() -> None:
    other, _ = build_classifier("mobilenet_v3_small", 2)
    sd = {k.removeprefix("body."): v for k, v in other.state_dict().items()}
    with pytest.raises(BadInput, match="do not fit the resnet18 architecture") as exc:
        build_classifier("resnet18", 2, weights=Resolved("x.pth", "file", state_dict=sd))
    assert "missing" in exc.value.message and "unexpected" in exc.value.message


def test_build_from_meta_rebuilds_the_same_module() -> None:
    model, _ = build_classifier("mnist_cnn_bn", 4, head="mlp", hidden=8, in_chans=1)
    meta = {"kind": "classifier", "arch": {"backbone": "mnist_cnn_bn", "num_classes": 4,
            "head": "mlp", "hidden": 8, "dropout": 0.0, "in_chans": 1}}  # fmt: skip
    again = build_from_meta(meta)
    again.load_state_dict(model.state_dict())  # strict: same keys and shapes
    x = torch.randn(3, 1, 28, 28)
    model.eval(), again.eval()
    torch.testing.assert_close(model(x), again(x))


def test_backbones_list_command_filters_by_pattern(cli):
    from tests.conftest import parse_json

    res = cli("backbones", "list", "mnist*", "--json")
    assert res.exit_code == 0, res.output
    names = {r["name"] for r in parse_json(res.stdout)["backbones"]}
    assert names == {"mnist_cnn", "mnist_cnn_bn"}
