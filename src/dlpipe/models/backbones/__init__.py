"""Backbones by name, from a registry of families, and a new head on top.

A family (torchvision, `timm/<name>`, dlpipe's own `native` CNNs) knows how to parse its names,
build a body without the old classifier, load and find pretrained weights, give the preprocessing
its weights expect, and list its models. Everything here looks the family up by name in FAMILIES.

Every model becomes `Classifier(body, head)`: `body(x)` returns pooled features (N, F), `head` maps
them to logits. The old classifier layer is found generically: timm's `reset_classifier(0)`, and for
torchvision the last Linear/Conv2d producing the 1000 ImageNet classes (`fc`, `classifier`,
`classifier[-1]`, `heads.head`, squeezenet's final conv, ...), replaced by Identity in place.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ...errors import BadInput
from ...weights import Resolved
from .family_native import NATIVE, MnistCNN, NativeFamily
from .family_timm import TimmFamily, timm_feature_size
from .family_torchvision import TorchvisionFamily, tv_kwargs
from .parts import (
    TIMM_PREFIX,
    BackboneSpec,
    Classifier,
    find_head,
    load_checked,
    make_head,
    replace_module,
)

__all__ = [
    "FAMILIES", "NATIVE", "TIMM_PREFIX", "BackboneSpec", "Classifier", "MnistCNN", "arch_meta",
    "build_classifier", "build_from_meta", "find_head", "import_checked", "in_channels",
    "list_backbones", "load_checked", "make_head", "parse_backbone", "preprocess_for",
    "replace_module", "resolve_weights", "timm_feature_size", "tv_kwargs",
]  # fmt: skip

# Looked up in this order when parsing a name: native names, then `timm/...`, then torchvision.
FAMILIES: dict[str, Any] = {f.name: f for f in (NativeFamily(), TimmFamily(), TorchvisionFamily())}


def parse_backbone(name: str) -> BackboneSpec:
    """Resolve a name to its family; unknown names fail with the closest matches."""
    for family in FAMILIES.values():
        arch = family.parse(name)
        if arch is not None:
            return BackboneSpec(name, family.name, arch)
    if name.startswith(TIMM_PREFIX):
        close = difflib.get_close_matches(name, FAMILIES["timm"].names(), n=5, cutoff=0.6)
    else:
        names = FAMILIES["torchvision"].names() + FAMILIES["native"].names()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        if not close and FAMILIES["timm"].parse(TIMM_PREFIX + name):
            close = [TIMM_PREFIX + name]
    hint = f"Did you mean: {', '.join(close)}?" if close else "No close names."
    raise BadInput(
        f"Unknown backbone {name!r}.",
        hint=f"{hint} See `dlpipe backbones list [PATTERN]`; timm models take the prefix timm/ "
        "(e.g. timm/resnet18).",
    )


def in_channels(backbone: str, data_channels: int) -> int:
    """Input channels the backbone's body takes for data with `data_channels`."""
    return FAMILIES[parse_backbone(backbone).family].in_chans(data_channels)


def resolve_weights(backbone: str, spec: str) -> Resolved:
    """Pretrained weights for `--weights spec`, through the backbone's family (offline first)."""
    parsed = parse_backbone(backbone)
    return FAMILIES[parsed.family].weights(parsed.arch, spec)


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
    built = FAMILIES[spec.family].build(spec.arch, weights, in_chans, image_size)
    model = Classifier(
        built.body, make_head(built.feature_size, num_classes, head, hidden, dropout),
        built.feature_size,
    )  # fmt: skip
    info = {"backbone": spec.name, "family": spec.family, "feature_size": built.feature_size,
            "replaced": built.replaced}  # fmt: skip
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


def preprocess_for(
    model: Classifier,
    backbone: str,
    weights: Resolved | None,
    channels: int,
    image_size: int | None,
) -> Any:
    """Preprocessing from the weights' / model's own configuration; --image-size overrides resize."""
    from ...data import Preprocess

    spec = parse_backbone(backbone)
    p = FAMILIES[spec.family].preprocess(spec.arch, model.body, weights)
    resize, crop, interp = p["resize"], p["crop"], p["interp"]
    mean, std = [float(m) for m in p["mean"]], [float(s) for s in p["std"]]
    if len(mean) == 1:  # a per-channel statistic given once (gray models)
        mean, std = mean * channels, std * channels
    if image_size:
        resize, crop = image_size, None
    if interp not in ("nearest", "bilinear", "bicubic", "lanczos"):
        interp = "bilinear"
    return Preprocess(resize=resize, crop=crop, mean=mean, std=std, interpolation=interp,
                      channels=channels)  # fmt: skip


def list_backbones(pattern: str | None = None, timm_limit: int = 60) -> list[dict[str, Any]]:
    """Backbones matching PATTERN with feature size and offline pretrained availability (timm
    models only with a pattern: there are over a thousand)."""
    return [row for f in FAMILIES.values() for row in f.rows(pattern, timm_limit)]


def import_checked(path: str | Path, backbone: str) -> tuple[Path, str]:
    """Match a file to one of the backbone's official torchvision weights by sha256, check that it
    loads into the architecture, and copy it into the torch-hub cache; returns (target, enum name)."""
    from ...compat import import_torchvision
    from ...weights import from_path, hash_prefix, import_file, sha256_of

    spec = parse_backbone(backbone)
    if spec.family != "torchvision":
        raise BadInput(
            f"`dlpipe weights import` handles torchvision files; {backbone} is a {spec.family} model.",
            hint="Pass the file with --weights PATH instead (it is checked key by key).",
        )
    try:
        enum = list(import_torchvision().models.get_model_weights(spec.arch))
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
    build_classifier(backbone, 2, weights=from_path(str(path)))  # keys and shapes, or a clear error
    return import_file(path, Path(match[0].url).name), match[0].name
