"""dlpipe's own backbones: the seed's small MNIST CNN, with and without BatchNorm."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...weights import Resolved, from_path
from .parts import Built, load_checked, matches


class MnistCNN(nn.Module):
    """The seed's small MNIST CNN (pytorch/examples), optionally with BatchNorm (convs without bias)."""

    def __init__(self, in_chans: int = 1, bn: bool = False) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            norm: list[nn.Module] = [nn.BatchNorm2d(cout)] if bn else []
            return [nn.Conv2d(cin, cout, 3, bias=not bn), *norm, nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_chans, 32), *block(32, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.AdaptiveAvgPool2d(12),  # identity at 28 px; lets other sizes through
            nn.Flatten(),
        )  # fmt: skip
        fc_norm: list[nn.Module] = [nn.BatchNorm1d(128)] if bn else []
        self.fc1 = nn.Sequential(
            nn.Linear(9216, 128, bias=not bn), *fc_norm, nn.ReLU(inplace=True), nn.Dropout(0.5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.features(x))


# name -> (builder(in_chans), feature size, preprocessing mean/std).
NATIVE: dict[str, tuple[Any, int, float, float]] = {
    "mnist_cnn": (lambda c: MnistCNN(c, bn=False), 128, 0.1307, 0.3081),
    "mnist_cnn_bn": (lambda c: MnistCNN(c, bn=True), 128, 0.1307, 0.3081),
}


class NativeFamily:
    """Small CNNs that take the data's own channels; no pretrained weights ship."""

    name = "native"
    # whether a run without --image-size should record the data\'s own side as its input size
    sized_by_data = True

    def parse(self, name: str) -> str | None:
        """The architecture `name` denotes in this family, or None."""
        return name if name in NATIVE else None

    def names(self) -> list[str]:
        """Every architecture (for closest-name suggestions)."""
        return list(NATIVE)

    def in_chans(self, data_channels: int) -> int:
        """Input channels of the body: the data's own (gray stays gray)."""
        return data_channels

    def weights(self, arch: str, spec: str) -> Resolved:
        """A state dict file, or none (DEFAULT has nothing to load here)."""
        if spec.lower() in ("none", "default"):
            return Resolved(spec, "none")
        return from_path(spec)

    def build(
        self, arch: str, weights: Resolved | None, in_chans: int, image_size: int | None
    ) -> Built:
        """The CNN with `weights` loaded (fc2 is the classifier it never had)."""
        builder, features, _mean, _std = NATIVE[arch]
        body = builder(in_chans)
        if weights is not None and weights.state_dict is not None:
            load_checked(body, weights.state_dict, ("fc2.",), arch)
        return Built(body, features, "fc2")

    def preprocess(self, arch: str, body: nn.Module, weights: Resolved | None) -> dict[str, Any]:
        """MNIST's mean/std, no resize of its own."""
        _b, _f, mean, std = NATIVE[arch]
        return {"resize": None, "crop": None, "mean": [mean], "std": [std], "interp": "bilinear"}

    def rows(self, pattern: str | None, limit: int) -> list[dict[str, Any]]:
        """Listing rows for names matching `pattern`."""
        return [
            {"name": n, "family": self.name, "feature_size": feat, "pretrained_offline": False}
            for n, (_b, feat, _m, _s) in NATIVE.items()
            if matches(n, pattern)
        ]
