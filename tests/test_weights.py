"""Weights resolution offline: local files, the offline package, the cache, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlpipe.errors import BadInput
from dlpipe.weights import resolve_torchvision, sha256_of
from tests.conftest import parse_json


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DLPIPE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLPIPE_CACHE_DIR", str(tmp_path / "cache"))


def test_default_resolves_to_the_verified_offline_package() -> None:
    r = resolve_torchvision("mobilenet_v2", "DEFAULT")
    assert r.source == "offline package"
    assert Path(r.file).name == "mobilenet_v2-b0353104.pth"
    assert r.sha256.startswith("b0353104")  # torchvision's file name carries the hash prefix
    assert r.name == "IMAGENET1K_V1" and "IMAGENET1K_V2" in r.note
    assert "features.0.0.weight" in r.state_dict


def test_local_pth_and_safetensors_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from dlpipe.models.backbones import build_classifier

    src, _ = build_classifier("resnet18", 1000)
    sd = {k[5:]: v for k, v in src.state_dict().items() if k.startswith("body.")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(sd, tmp_path / "r18.pth")
    save_file(sd, str(tmp_path / "r18.safetensors"))
    for f in ("r18.pth", "r18.safetensors"):
        r = resolve_torchvision("resnet18", str(tmp_path / f))
        assert r.source == "file"
        model, _ = build_classifier("resnet18", 3, weights=r)
        torch.testing.assert_close(model.body.conv1.weight, sd["conv1.weight"])


def test_default_offline_with_nothing_cached_names_the_file() -> None:
    with pytest.raises(BadInput) as exc:
        resolve_torchvision("densenet121", "DEFAULT")
    text = exc.value.paragraph()
    assert "densenet121-a639ec97.pth" in text and "weights import" in text


def test_unknown_weights_name_lists_the_real_ones() -> None:
    with pytest.raises(BadInput) as exc:
        resolve_torchvision("mobilenet_v2", "IMAGENET22K_V9")
    assert "IMAGENET1K_V1" in exc.value.paragraph()


def test_weights_import_then_list_then_resolve_from_cache(cli, tmp_path: Path) -> None:
    from dlpipe.weights import package_files

    official = next(f for f, _ in package_files() if f.name == "mobilenet_v2-b0353104.pth")
    res = cli("weights", "import", str(official), "--backbone", "mobilenet_v2", "--json")
    assert res.exit_code == 0, res.output
    placed = Path(parse_json(res.stdout)["file"])
    assert placed == tmp_path / "torch" / "hub" / "checkpoints" / official.name
    assert sha256_of(placed) == sha256_of(official)
    listed = parse_json(cli("weights", "list", "--json").stdout)["weights"]
    assert any(w["file"] == str(placed) and w["verified"] for w in listed)
    assert resolve_torchvision("mobilenet_v2", "IMAGENET1K_V1").source == "torch-hub cache"


def test_weights_import_refuses_a_file_that_is_not_official(cli, tmp_path: Path) -> None:
    bogus = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"x": torch.zeros(1)}, bogus)
    res = cli("weights", "import", str(bogus), "--backbone", "mobilenet_v2")
    assert res.exit_code == 2
    assert "none of the official" in res.output
