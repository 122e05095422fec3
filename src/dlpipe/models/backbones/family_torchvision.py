"""torchvision's classification models, by their torchvision name."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ...compat import import_torchvision
from ...weights import Resolved, find_offline, resolve_torchvision
from .parts import Built, find_head, load_checked, matches, meta_feature_size, replace_module

_NO_AUX = {"googlenet", "inception_v3"}


def tv_kwargs(arch: str, image_size: int | None) -> dict[str, Any]:
    """Builder arguments that depend on the input size (ViT's position embeddings)."""
    kwargs: dict[str, Any] = {}
    if arch in _NO_AUX:
        kwargs.update(aux_logits=False, init_weights=False)
    if arch.startswith("vit_") and image_size:
        kwargs["image_size"] = image_size
    return kwargs


def _fix_densenet_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """Old torchvision densenet files name 'norm.1'; the module is 'norm1' (torchvision does this too)."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out = {}
    for k, v in sd.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _transforms(arch: str, weights_name: str | None) -> Any:
    tv = import_torchvision()
    try:
        enum = tv.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    w = enum[weights_name] if weights_name in enum.__members__ else enum.DEFAULT
    return w.transforms()


def _offline(arch: str) -> bool:
    tv = import_torchvision()
    try:
        enum = tv.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return False
    return any(find_offline(w.url.rsplit("/", 1)[-1]) for w in enum)


class TorchvisionFamily:
    """Any torchvision classifier; the old head is the last layer with 1000 outputs."""

    name = "torchvision"
    # whether a run without --image-size should record the data\'s own side as its input size
    sized_by_data = False

    def names(self) -> list[str]:
        """Classification models of torchvision."""
        tv = import_torchvision()
        return sorted(tv.models.list_models(module=tv.models))

    def parse(self, name: str) -> str | None:
        """The architecture `name` denotes in this family, or None."""
        return name if name in self.names() else None

    def in_chans(self, data_channels: int) -> int:
        """ImageNet models take RGB; gray images are repeated to 3 channels."""
        return 3

    def weights(self, arch: str, spec: str) -> Resolved:
        """Offline first: an explicit file, the hub cache, an installed package, then download."""
        return resolve_torchvision(arch, spec)

    def build(
        self, arch: str, weights: Resolved | None, in_chans: int, image_size: int | None
    ) -> Built:
        """The torchvision model with `weights` loaded and its classifier replaced by Identity."""
        tv = import_torchvision()
        kwargs = tv_kwargs(arch, image_size)
        model = tv.models.get_model(arch, weights=None, **kwargs)
        head_path, features = find_head(model)
        if weights is not None and weights.state_dict is not None:
            sd = weights.state_dict
            if arch.startswith("densenet"):
                sd = _fix_densenet_keys(sd)
            if arch.startswith("vit_") and "image_size" in kwargs:
                from torchvision.models.vision_transformer import interpolate_embeddings

                sd = interpolate_embeddings(kwargs["image_size"], model.patch_size, dict(sd))
            load_checked(model, sd, (head_path + ".",), arch)
        replace_module(model, head_path, nn.Identity())
        return Built(model, features, head_path)

    def preprocess(self, arch: str, body: nn.Module, weights: Resolved | None) -> dict[str, Any]:
        """The weights' own transforms (resize, crop, mean/std, interpolation)."""
        t = _transforms(arch, weights.name if weights else None)
        if t is None:  # no weights, no config: ImageNet's usual recipe
            return {"resize": 256, "crop": 224, "interp": "bilinear",
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip
        return {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]),
                "mean": list(t.mean), "std": list(t.std), "interp": t.interpolation.value}  # fmt: skip

    def rows(self, pattern: str | None, limit: int) -> list[dict[str, Any]]:
        """Listing rows for names matching `pattern` (feature sizes on the meta device)."""
        tv = import_torchvision()
        rows = []
        for name in self.names():
            if matches(name, pattern):
                size = meta_feature_size(
                    lambda n=name: find_head(tv.models.get_model(n, **tv_kwargs(n, None)))[1]
                )
                rows.append({"name": name, "family": self.name, "feature_size": size,
                             "pretrained_offline": _offline(name)})  # fmt: skip
        return rows
