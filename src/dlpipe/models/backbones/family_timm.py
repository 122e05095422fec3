"""timm models, named `timm/<model>` (a pretrained tag may follow: timm/convnext_nano.in12k)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...compat import import_timm
from ...weights import Resolved, resolve_timm, timm_weights_file
from .parts import TIMM_PREFIX, Built, load_checked, meta_feature_size


def timm_feature_size(model: nn.Module) -> int:
    """What a timm model returns after reset_classifier(0)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


class TimmFamily:
    """timm's models: `reset_classifier(0)` and `resolve_model_data_config` do the work."""

    name = "timm"
    # whether a run without --image-size should record the data\'s own side as its input size
    sized_by_data = False

    def parse(self, name: str) -> str | None:
        """The architecture `timm/<arch>` denotes, or None (not a timm name)."""
        if not name.startswith(TIMM_PREFIX):
            return None
        arch = name[len(TIMM_PREFIX) :]
        return arch if import_timm().is_model(arch.split(".")[0]) else None

    def names(self) -> list[str]:
        """Every timm model, with the prefix (for closest-name suggestions)."""
        return [TIMM_PREFIX + n for n in import_timm().list_models()]

    def in_chans(self, data_channels: int) -> int:
        """Pretrained timm models take RGB."""
        return 3

    def weights(self, arch: str, spec: str) -> Resolved:
        """The model's pretrained file (Hugging Face cache first), or a state dict path."""
        pcfg = import_timm().models.get_pretrained_cfg(arch)
        return resolve_timm(arch, pcfg.to_dict() if pcfg else {}, spec)

    def build(
        self, arch: str, weights: Resolved | None, in_chans: int, image_size: int | None
    ) -> Built:
        """timm.create_model without a classifier, `weights` loaded."""
        timm = import_timm()
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
        model = None
        if image_size:
            try:
                model = timm.create_model(arch, pretrained=False, img_size=image_size, **kwargs)
            except TypeError:  # CNNs take any size and have no img_size argument
                pass
        model = model or timm.create_model(arch, pretrained=False, **kwargs)
        head = str(model.pretrained_cfg.get("classifier") or "head")
        if weights is not None and weights.state_dict is not None:
            load_checked(model, weights.state_dict, (head + ".",), TIMM_PREFIX + arch)
        model.reset_classifier(0)
        return Built(model, timm_feature_size(model), head)

    def preprocess(self, arch: str, body: nn.Module, weights: Resolved | None) -> dict[str, Any]:
        """timm's resolve_model_data_config: input size, crop_pct, mean/std, interpolation."""
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(body)
        size = int(cfg["input_size"][-1])
        return {"resize": int(size / cfg.get("crop_pct", 1.0)), "crop": size,
                "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                "interp": str(cfg["interpolation"])}  # fmt: skip

    def rows(self, pattern: str | None, limit: int) -> list[dict[str, Any]]:
        """Listing rows for timm names matching `pattern` (only when a pattern is given)."""
        if not pattern:
            return []
        timm = import_timm()
        pattern = pattern.removeprefix(TIMM_PREFIX)
        pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        rows = []
        for arch in timm.list_models(pat)[:limit]:
            cfg = timm.models.get_pretrained_cfg(arch)
            size = meta_feature_size(
                lambda a=arch: timm_feature_size(
                    timm.create_model(a, pretrained=False, num_classes=0)
                )
            )
            hf = cfg.hf_hub_id if cfg else None
            rows.append({"name": TIMM_PREFIX + arch, "family": self.name, "feature_size": size,
                         "pretrained_offline": timm_weights_file(hf) is not None})  # fmt: skip
        return rows
