"""Backbones by name (torchvision, `timm/<name>`, dlpipe's own small CNNs) and a new head on top.

Every model becomes `Classifier(body, head)`: `body(x)` returns pooled features (N, F), `head` maps
them to logits. The old classifier layer is found generically: timm's `reset_classifier(0)`, and for
torchvision the last Linear/Conv2d producing the 1000 ImageNet classes (`fc`, `classifier`,
`classifier[-1]`, `heads.head`, squeezenet's final conv, ...), replaced by Identity in place.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compat import import_timm, import_torchvision
from ..errors import BadInput
from ..weights import Resolved

TIMM_PREFIX = "timm/"
_IMAGENET_CLASSES = 1000
# Auxiliary classifiers torchvision files carry but a model built with aux_logits=False lacks.
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
_NO_AUX = {"googlenet", "inception_v3"}


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


# dlpipe's own models: name -> (builder(in_chans), feature size, preprocessing mean/std).
NATIVE: dict[str, tuple[Any, int, float, float]] = {
    "mnist_cnn": (lambda c: MnistCNN(c, bn=False), 128, 0.1307, 0.3081),
    "mnist_cnn_bn": (lambda c: MnistCNN(c, bn=True), 128, 0.1307, 0.3081),
}


@dataclass
class BackboneSpec:
    """A parsed backbone name."""

    name: str  # as the user wrote it (canonical)
    family: str  # "torchvision" | "timm" | "native"
    arch: str  # name inside the family


def torchvision_names() -> list[str]:
    """Classification models of torchvision."""
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def parse_backbone(name: str) -> BackboneSpec:
    """Resolve a name to its family; unknown names fail with the closest matches."""
    if name in NATIVE:
        return BackboneSpec(name, "native", name)
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX) :]
        timm = import_timm()
        if timm.is_model(arch.split(".")[0]):
            return BackboneSpec(name, "timm", arch)
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        _unknown(name, [TIMM_PREFIX + c for c in close])
    tv = torchvision_names()
    if name in tv:
        return BackboneSpec(name, "torchvision", name)
    close = difflib.get_close_matches(name, tv + list(NATIVE), n=5, cutoff=0.5)
    if not close and import_timm().is_model(name):
        close = [TIMM_PREFIX + name]
    _unknown(name, close)
    raise AssertionError  # unreachable


def _unknown(name: str, close: list[str]) -> None:
    hint = f"Did you mean: {', '.join(close)}?" if close else "No close names."
    raise BadInput(
        f"Unknown backbone {name!r}.",
        hint=f"{hint} See `dlpipe finetune --list-backbones [PATTERN]`; timm models take the "
        "prefix timm/ (e.g. timm/resnet18).",
    )


def find_head(model: nn.Module) -> tuple[str, int]:
    """(path, input feature size) of the last layer producing the ImageNet classes."""
    found = None
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == _IMAGENET_CLASSES:
            found = (path, mod.in_features)
        elif isinstance(mod, nn.Conv2d) and mod.out_channels == _IMAGENET_CLASSES:
            found = (path, mod.in_channels)
    if found is None:
        raise BadInput(f"Could not find the classifier layer of {type(model).__name__}.")
    return found


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Set the submodule at dotted `path` (works for Sequential indices too)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


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


def load_checked(model: nn.Module, sd: dict[str, Any], skip: tuple[str, ...], arch: str) -> None:
    """Load a backbone state dict, ignoring the old classifier; mismatches fail with the first few."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in sd.items() if not k.startswith(skip + _AUX_PREFIXES)}
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


def _torchvision_body(
    spec: BackboneSpec, weights: Resolved | None, image_size: int | None
) -> tuple[nn.Module, int, str]:
    tv = import_torchvision()
    kwargs = tv_kwargs(spec.arch, image_size)
    model = tv.models.get_model(spec.arch, weights=None, **kwargs)
    head_path, features = find_head(model)
    if weights is not None and weights.state_dict is not None:
        sd = weights.state_dict
        if spec.arch.startswith("densenet"):
            sd = _fix_densenet_keys(sd)
        if spec.arch.startswith("vit_") and "image_size" in kwargs:
            from torchvision.models.vision_transformer import interpolate_embeddings

            sd = interpolate_embeddings(kwargs["image_size"], model.patch_size, dict(sd))
        load_checked(model, sd, (head_path + ".",), spec.arch)
    replace_module(model, head_path, nn.Identity())
    return model, features, head_path


def _timm_create(spec: BackboneSpec, in_chans: int, image_size: int | None) -> nn.Module:
    timm = import_timm()
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    if image_size:
        try:
            return timm.create_model(spec.arch, pretrained=False, img_size=image_size, **kwargs)
        except TypeError:  # CNNs take any size and have no img_size argument
            pass
    return timm.create_model(spec.arch, pretrained=False, **kwargs)


def timm_feature_size(model: nn.Module) -> int:
    """What a timm model returns after reset_classifier(0)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _timm_body(
    spec: BackboneSpec, weights: Resolved | None, in_chans: int, image_size: int | None
) -> tuple[nn.Module, int, str]:
    model = _timm_create(spec, in_chans, image_size)
    head = str(model.pretrained_cfg.get("classifier") or "head")
    if weights is not None and weights.state_dict is not None:
        load_checked(model, weights.state_dict, (head + ".",), TIMM_PREFIX + spec.arch)
    model.reset_classifier(0)
    return model, timm_feature_size(model), head


def build_classifier(
    backbone: str,
    num_classes: int,
    head: str = "linear",
    hidden: int | None = None,
    dropout: float = 0.0,
    in_chans: int = 3,
    image_size: int | None = None,
    weights: Resolved | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """The backbone (with `weights` loaded) and a fresh head; returns (model, info)."""
    spec = parse_backbone(backbone)
    if spec.family == "native":
        builder, features, _m, _s = NATIVE[spec.arch]
        body, head_path = builder(in_chans), "fc2"
        if weights is not None and weights.state_dict is not None:
            load_checked(body, weights.state_dict, ("fc2.",), spec.arch)
    elif spec.family == "timm":
        body, features, head_path = _timm_body(spec, weights, in_chans, image_size)
    else:
        body, features, head_path = _torchvision_body(spec, weights, image_size)
    model = Classifier(body, make_head(features, num_classes, head, hidden, dropout), features)
    info = {"backbone": spec.name, "family": spec.family, "feature_size": features,
            "replaced": head_path}  # fmt: skip
    return model, info


def arch_meta(backbone: str, num_classes: int, head: str, hidden: int | None, dropout: float,
              in_chans: int, image_size: int | None) -> dict[str, Any]:  # fmt: skip
    """The checkpoint's meta['arch'] (the builder's arguments)."""
    return {"backbone": backbone, "num_classes": num_classes, "head": head, "hidden": hidden,
            "dropout": dropout, "in_chans": in_chans, "image_size": image_size}  # fmt: skip


def build_from_meta(meta: dict[str, Any]) -> Classifier:
    """Rebuild the exportable classifier a checkpoint describes, random weights, offline."""
    a = meta["arch"]
    model, _ = build_classifier(
        a["backbone"], int(a["num_classes"]), a.get("head", "linear"), a.get("hidden"),
        float(a.get("dropout", 0.0)), int(a.get("in_chans", 3)), a.get("image_size"),
    )  # fmt: skip
    return model


def _tv_transforms(arch: str, weights_name: str | None) -> Any:
    tv = import_torchvision()
    try:
        enum = tv.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    w = enum[weights_name] if weights_name in enum.__members__ else enum.DEFAULT
    return w.transforms()


def preprocess_for(
    model: Classifier,
    backbone: str,
    weights: Resolved | None,
    channels: int,
    image_size: int | None,
) -> Any:
    """Preprocessing from the weights' / model's own configuration; --image-size overrides resize."""
    from ..data import Preprocess

    spec = parse_backbone(backbone)
    if spec.family == "native":
        _b, _f, mean, std = NATIVE[spec.arch]
        return Preprocess(resize=image_size, mean=[mean] * channels, std=[std] * channels,
                          channels=channels)  # fmt: skip
    if spec.family == "timm":
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model.body)
        size = int(cfg["input_size"][-1])
        resize, crop = int(size / cfg.get("crop_pct", 1.0)), size
        mean, std, interp = list(cfg["mean"]), list(cfg["std"]), str(cfg["interpolation"])
    else:
        t = _tv_transforms(spec.arch, weights.name if weights else None)
        if t is None:  # no weights, no config: ImageNet's usual recipe
            resize, crop, interp = 256, 224, "bilinear"
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        else:
            resize, crop = int(t.resize_size[0]), int(t.crop_size[0])
            mean, std, interp = list(t.mean), list(t.std), t.interpolation.value
    if image_size:
        resize, crop = image_size, None
    if interp not in ("nearest", "bilinear", "bicubic", "lanczos"):
        interp = "bilinear"
    return Preprocess(resize=resize, crop=crop, mean=[float(m) for m in mean],
                      std=[float(s) for s in std], interpolation=interp, channels=channels)  # fmt: skip


def _match(name: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return fnmatch.fnmatch(name, pat)


def _meta_feature_size(build: Any) -> int | None:
    try:
        with torch.device("meta"):
            return int(build())
    except Exception:  # a model that cannot be built on the meta device: size unknown
        return None


def _tv_offline(arch: str) -> bool:
    from ..weights import find_offline

    tv = import_torchvision()
    try:
        enum = tv.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return False
    return any(find_offline(w.url.rsplit("/", 1)[-1]) for w in enum)


def list_backbones(pattern: str | None = None, timm_limit: int = 60) -> list[dict[str, Any]]:
    """Backbones matching PATTERN with feature size and offline pretrained availability."""
    tv = import_torchvision()
    rows: list[dict[str, Any]] = []
    for name, (_b, feat, _m, _s) in NATIVE.items():
        if _match(name, pattern):
            rows.append({"name": name, "family": "native", "feature_size": feat,
                         "pretrained_offline": False})  # fmt: skip
    for name in torchvision_names():
        if _match(name, pattern):
            size = _meta_feature_size(
                lambda n=name: find_head(tv.models.get_model(n, **tv_kwargs(n, None)))[1]
            )
            rows.append({"name": name, "family": "torchvision", "feature_size": size,
                         "pretrained_offline": _tv_offline(name)})  # fmt: skip
    if pattern:
        rows += _timm_rows(pattern.removeprefix(TIMM_PREFIX), timm_limit)
    return rows


def _timm_rows(pattern: str, limit: int) -> list[dict[str, Any]]:
    from ..weights import timm_weights_file

    timm = import_timm()
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    rows = []
    for arch in timm.list_models(pat)[:limit]:
        cfg = timm.models.get_pretrained_cfg(arch)
        size = _meta_feature_size(
            lambda a=arch: timm_feature_size(timm.create_model(a, pretrained=False, num_classes=0))
        )
        hf = cfg.hf_hub_id if cfg else None
        rows.append({"name": TIMM_PREFIX + arch, "family": "timm", "feature_size": size,
                     "pretrained_offline": timm_weights_file(hf) is not None})  # fmt: skip
    return rows


def import_checked(path: str | Path, backbone: str) -> tuple[Path, str]:
    """Match a file to one of the backbone's official torchvision weights by sha256, check that it
    loads into the architecture, and copy it into the torch-hub cache; returns (target, enum name)."""
    from ..weights import from_path, hash_prefix, import_file, sha256_of

    spec = parse_backbone(backbone)
    if spec.family != "torchvision":
        raise BadInput(
            f"`dlpipe weights import` handles torchvision files; {backbone} is a {spec.family} model.",
            hint="Pass the file with --weights PATH instead (it is checked key by key).",
        )
    tv = import_torchvision()
    try:
        enum = list(tv.models.get_model_weights(spec.arch))
    except (ValueError, KeyError):
        enum = []
    digest = sha256_of(path)
    match = [w for w in enum if digest.startswith(hash_prefix(Path(w.url).name) or "-")]
    if not match:
        names = ", ".join(Path(w.url).name for w in enum) or "none"
        raise BadInput(
            f"{path} (sha256 {digest[:12]}...) is none of the official {spec.arch} files ({names}).",
            hint="Use it directly with --weights PATH, or check --backbone.",
        )
    w = match[0]
    build_classifier(backbone, 2, weights=from_path(str(path)))  # keys and shapes, or a clear error
    return import_file(path, Path(w.url).name), w.name
