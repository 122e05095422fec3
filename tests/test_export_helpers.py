"""Tiny real models and real checkpoints for the export/validate/predict tests.

The builders follow the checkpoint contract (dlpipe.models.KIND_BUILDERS); tests point a kind at
them with monkeypatch until (and beside) the real training builders.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dlpipe.checkpoint import save_checkpoint
from dlpipe.data import Preprocess, open_source

HERE = "tests.test_export_helpers"


class TinyClassifier(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyGenerator(nn.Module):
    def __init__(self, nz: int, size: int, channels: int) -> None:
        super().__init__()
        self.size, self.channels = size, channels
        self.fc = nn.Linear(nz, 8 * (size // 2) ** 2)
        self.up = nn.Sequential(
            nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, channels, 4, 2, 1), nn.Tanh()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(z).view(-1, 8, self.size // 2, self.size // 2))


class TinyAutoencoder(nn.Module):
    def __init__(self, latent: int, size: int, channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * (size // 2) ** 2, latent),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(latent, 4 * (size // 2) ** 2), nn.ReLU(), nn.Unflatten(1, (4, size // 2, size // 2)),
            nn.ConvTranspose2d(4, channels, 4, 2, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def build_classifier(meta: dict) -> nn.Module:
    return TinyClassifier(meta["arch"]["in_chans"], meta["arch"]["num_classes"])


def build_generator(meta: dict) -> nn.Module:
    a = meta["arch"]
    return TinyGenerator(a["nz"], a["image_size"], a["channels"])


def build_autoencoder(meta: dict) -> nn.Module:
    a = meta["arch"]
    return TinyAutoencoder(a["latent"], a["image_size"], a["channels"])


@pytest.fixture
def tiny_builders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every kind at the tiny builders above."""
    from dlpipe import models

    for kind in ("classifier", "generator", "autoencoder"):
        monkeypatch.setitem(models.KIND_BUILDERS, kind, f"{HERE}:build_{kind}")


def _data_meta(source: str, ds) -> dict:
    return {"source": source, "data_root": None, "fingerprint": ds.fingerprint, "seed": 0,
            "val_fraction": 0.2, "test_fraction": 0.3, "limit": None}  # fmt: skip


def _train_briefly(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, steps: int = 5
) -> None:
    """A few real optimisation steps so weights and BatchNorm statistics are not the init values."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        out = model(x)
        loss = (
            nn.functional.cross_entropy(out, y) if y is not None else nn.functional.mse_loss(out, x)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def write_classifier_run(root: Path, image_folder: Path) -> Path:
    """A run folder with a tiny classifier trained a few steps on the 3-class image folder."""
    ds = open_source(image_folder)
    pre = Preprocess(resize=16, crop=16, mean=[0.5, 0.4, 0.3], std=[0.25, 0.25, 0.25], channels=3)
    x = torch.from_numpy(pre.batch([ds.image(i) for i in range(len(ds))]))
    torch.manual_seed(0)
    model = TinyClassifier(3, 3)
    _train_briefly(model, x, torch.from_numpy(ds.labels))
    meta = {"command": "finetune", "kind": "classifier", "export_group": "model",
            "arch": {"backbone": "tiny", "num_classes": 3, "head": "linear", "hidden": None, "dropout": 0.0, "in_chans": 3},
            "preprocess": pre.to_dict(), "class_names": ds.class_names, "io": {"input": "image", "output": "logits"},
            "data": _data_meta(str(image_folder), ds), "metrics": {}}  # fmt: skip
    run = root / "runs" / "finetune" / "tiny"
    save_checkpoint(run / "checkpoints" / "last.safetensors", {"model": model.state_dict()}, meta)
    return run


def write_generator_run(root: Path) -> Path:
    torch.manual_seed(0)
    model = TinyGenerator(8, 8, 1)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 8))  # real BatchNorm running statistics
    model.eval()
    meta = {"command": "gan", "kind": "generator", "export_group": "generator",
            "arch": {"nz": 8, "ngf": 8, "image_size": 8, "channels": 1},
            "preprocess": Preprocess(mean=[0.5], std=[0.5]).to_dict(), "class_names": [],
            "io": {"input": "z", "output": "image"}, "data": None, "metrics": {}}  # fmt: skip
    run = root / "runs" / "gan" / "tiny"
    save_checkpoint(
        run / "checkpoints" / "last.safetensors", {"generator": model.state_dict()}, meta
    )
    return run


def write_autoencoder_run(root: Path) -> Path:
    """A tiny autoencoder trained a few steps on the built-in 8x8 digits."""
    ds = open_source("digits")
    pre = Preprocess(channels=1)
    x = torch.from_numpy(pre.batch([ds.image(i) for i in range(32)]))
    torch.manual_seed(0)
    model = TinyAutoencoder(6, 8, 1)
    _train_briefly(model, x, None)
    meta = {"command": "ae", "kind": "autoencoder", "export_group": "model",
            "arch": {"latent": 6, "image_size": 8, "channels": 1, "width": 4},
            "preprocess": pre.to_dict(), "class_names": ds.class_names,
            "io": {"input": "image", "output": "reconstruction"}, "data": _data_meta("digits", ds), "metrics": {}}  # fmt: skip
    run = root / "runs" / "ae" / "tiny"
    save_checkpoint(run / "checkpoints" / "last.safetensors", {"model": model.state_dict()}, meta)
    return run
