"""What a checkpoint says about itself: one typed description for every training command.

Written into the checkpoint header (see checkpoint.py) and read back by export, sample, eval and
--resume. The contract (dlpipe.models): `kind` names the builder, `arch` holds its arguments, the
exportable weights are in group `export_group`, `preprocess` is a Preprocess.to_dict(), `data` says
how to reopen the data and its split, `io` names the exported input and output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import BadInput


@dataclass
class CheckpointMeta:
    """The header description of a dlpipe checkpoint."""

    command: str  # run folder of the command that wrote it: finetune | gan | ae
    kind: str  # classifier | generator | autoencoder (a key of models.KIND_BUILDERS)
    arch: dict[str, Any]  # the builder's arguments
    export_group: str  # weights group of the exportable module
    preprocess: dict[str, Any]  # Preprocess.to_dict()
    io: dict[str, str]  # exported input/output names, e.g. {"input": "image", "output": "logits"}
    data: dict[str, Any]  # source, data_root, fingerprint, seed, fractions: how to reopen the split
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's (or final) figures
    class_names: list[str] = field(default_factory=list)  # classifiers: output order
    config: dict[str, Any] | None = None  # the run's resolved options
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # kind-specific keys (latent_size, noise...)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict stored in the header (extra keys flattened in)."""
        out = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, meta: dict[str, Any], where: str = "checkpoint") -> CheckpointMeta:
        """Parse a header's meta, refusing (not crashing on) missing keys or wrong types."""
        if not isinstance(meta, dict):
            raise BadInput(f"{where}: its description is {type(meta).__name__}, not a mapping.")
        types = {"command": str, "kind": str, "arch": dict, "export_group": str,
                 "preprocess": dict, "io": dict, "data": dict, "metrics": dict,
                 "class_names": list, "config": dict}  # fmt: skip
        known = {f.name for f in fields(cls)} - {"extra"}
        for key, kind in types.items():
            value = meta.get(key)
            required = key in ("command", "kind", "arch", "export_group")
            if (value is None and required) or (value is not None and not isinstance(value, kind)):
                raise BadInput(
                    f"{where}: its description has no usable {key!r} "
                    f"(expected {kind.__name__}, got {type(value).__name__}).",
                    hint="Re-train with this dlpipe version, or pass a checkpoint dlpipe wrote.",
                )
        given = {k: v for k, v in meta.items() if k in known}
        given.setdefault("preprocess", {})
        given.setdefault("io", {})
        given.setdefault("data", {})
        return cls(**given, extra={k: v for k, v in meta.items() if k not in known})
