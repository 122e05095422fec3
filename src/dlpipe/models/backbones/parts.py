"""What every backbone family shares: the Classifier (body + head), the new head, finding and
replacing the old ImageNet classifier, and loading a state dict with clear mismatch errors."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import BadInput

TIMM_PREFIX = "timm/"
IMAGENET_CLASSES = 1000
# Auxiliary classifiers torchvision files carry but a model built with aux_logits=False lacks.
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


@dataclass
class BackboneSpec:
    """A parsed backbone name."""

    name: str  # as the user wrote it (canonical)
    family: str  # a key of FAMILIES: "torchvision" | "timm" | "native"
    arch: str  # name inside the family


@dataclass
class Built:
    """A family's body with the old classifier removed."""

    body: nn.Module  # x -> pooled features (N, feature_size)
    feature_size: int
    replaced: str  # path of the layer that was the ImageNet classifier


class Classifier(nn.Module):
    """A feature extractor and a head; forward = head(body(x))."""

    def __init__(self, body: nn.Module, head: nn.Module, feature_size: int) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.feature_size = feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_head(
    feature_size: int, num_classes: int, kind: str, hidden: int | None, dropout: float
) -> nn.Module:
    """linear: [Dropout] Linear. mlp: Linear(no bias) -> BatchNorm1d -> ReLU -> Dropout -> Linear."""
    if kind == "linear":
        linear = nn.Linear(feature_size, num_classes)
        return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else nn.Sequential(linear)
    if kind == "mlp":
        h = hidden or 256
        return nn.Sequential(
            nn.Linear(feature_size, h, bias=False),  # BatchNorm supplies the bias
            nn.BatchNorm1d(h),  # before the activation, as the seed guidelines say
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(h, num_classes),
        )
    raise BadInput(f"--head {kind!r} is not known.", hint="Use linear or mlp.")


def find_head(model: nn.Module) -> tuple[str, int]:
    """(path, input feature size) of the last layer producing the ImageNet classes."""
    found = None
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == IMAGENET_CLASSES:
            found = (path, mod.in_features)
        elif isinstance(mod, nn.Conv2d) and mod.out_channels == IMAGENET_CLASSES:
            found = (path, mod.in_channels)
    if found is None:
        raise BadInput(f"Could not find the classifier layer of {type(model).__name__}.")
    return found


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Set the submodule at dotted `path` (works for Sequential indices too)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def load_checked(model: nn.Module, sd: dict[str, Any], skip: tuple[str, ...], arch: str) -> None:
    """Load a backbone state dict, ignoring the old classifier; mismatches fail with the first few."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in sd.items() if not k.startswith(skip + AUX_PREFIXES)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise BadInput(
            f"These weights do not fit the {arch} architecture ({len(expected)} tensors expected): "
            + "; ".join(parts)
            + ".",
            hint=f"Pass weights saved from {arch} (state_dict of the same model), or pick the "
            "--backbone they were made for.",
        )
    model.load_state_dict(given, strict=False)


def matches(name: str, pattern: str | None) -> bool:
    """Glob match; a pattern without wildcards matches anywhere in the name."""
    if not pattern:
        return True
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return fnmatch.fnmatch(name, pat)


def meta_feature_size(build: Any) -> int | None:
    """A feature size computed on the meta device (no memory, no weights); None if it cannot be."""
    try:
        with torch.device("meta"):
            return int(build())
    except Exception:  # a model that cannot be built on the meta device: size unknown
        return None
