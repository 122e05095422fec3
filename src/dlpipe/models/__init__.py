"""Models and how to rebuild any of them from a checkpoint's description.

Contract every training command follows (export/validate rely on it):
- a checkpoint's `meta["kind"]` is one of KIND_BUILDERS; `meta["arch"]` holds the builder's
  arguments; the exportable module's weights are in weights group `meta["export_group"]`;
- `meta["preprocess"]` is a `Preprocess.to_dict()`; `meta["data"]` says how to reopen the data
  and its split (`source`, `data_root`, `fingerprint`, `seed`, `val_fraction`, `test_fraction`);
- `meta["io"]` names the exported input/output (e.g. {"input": "image", "output": "logits"});
- an autoencoder's `meta["arch"]["net"]` is "unet" (models/unet.py, exports whole) or "conv"
  (models/autoencoder.py, with encoder/decoder parts; files without "net" are conv).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import BadInput

# kind -> "module:function" taking the checkpoint meta and returning an nn.Module (random weights).
KIND_BUILDERS = {
    "classifier": "dlpipe.models.backbones:build_from_meta",
    "generator": "dlpipe.models.dcgan:build_from_meta",
    "autoencoder": "dlpipe.models.autoencoder:build_from_meta",
}


def build_from_meta(meta: dict[str, Any]):  # noqa: ANN201 - returns torch.nn.Module
    """Rebuild the exportable module a checkpoint describes (weights are loaded by the caller)."""
    kind = meta.get("kind")
    if kind not in KIND_BUILDERS:
        raise BadInput(
            f"Checkpoint kind {kind!r} is unknown to this dlpipe.",
            hint=f"Known kinds: {', '.join(KIND_BUILDERS)}; was it written by a newer dlpipe?",
        )
    module_name, func = KIND_BUILDERS[kind].split(":")
    return getattr(importlib.import_module(module_name), func)(meta)
