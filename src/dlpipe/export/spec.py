"""What gets exported: the checkpoint a reference points to, the module part, its named I/O.

Export specs are data (optimum's exporter config is the model): one `IOSpec` per (kind, part) says
the input/output names and what kind of tensor each is. Export and validate both build the module
through `build_exportable`, so the PyTorch reference is exactly the graph that was exported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import BadInput

PARTS = ("full", "encoder", "decoder")


@dataclass(frozen=True)
class IOSpec:
    """Names and meaning of one exportable graph's single input and single output."""

    input: str  # ONNX input name
    output: str  # ONNX output name
    input_kind: str  # "image" (N,C,H,W) | "latent" (N,D)
    output_kind: str  # "logits" | "image" | "latent" | "probabilities"


SPECS: dict[tuple[str, str], IOSpec] = {
    ("classifier", "full"): IOSpec("image", "logits", "image", "logits"),
    ("generator", "full"): IOSpec("z", "image", "latent", "image"),
    ("autoencoder", "full"): IOSpec("image", "reconstruction", "image", "image"),
    ("autoencoder", "encoder"): IOSpec("image", "latent", "image", "latent"),
    ("autoencoder", "decoder"): IOSpec("latent", "image", "latent", "image"),
}


def io_spec(
    meta: dict[str, Any], part: str = "full", with_preprocess: bool = False, softmax: bool = False
) -> IOSpec:
    """The I/O of the graph for this checkpoint and part (meta["io"] names the full model's I/O)."""
    kind = meta.get("kind")
    spec = SPECS.get((kind, part))
    if spec is None:
        parts = [p for k, p in SPECS if k == kind] or ["full"]
        raise BadInput(
            f"--part {part} does not exist for a {kind} checkpoint.",
            hint=f"Use --part {' or '.join(parts)}.",
        )
    if kind == "autoencoder" and part != "full" and _ae_net(meta) != "conv":
        raise BadInput(
            f"--part {part} does not exist for a U-Net autoencoder: its skip connections carry "
            "detail past the bottleneck at every scale, so there is no encoder or decoder that "
            "works alone.",
            hint="Export it with --part full (the default), or train with --arch conv for "
            "separable encoder/decoder parts.",
        )
    io = meta.get("io") or {}
    if part == "full" and io:
        spec = replace(
            spec, input=io.get("input", spec.input), output=io.get("output", spec.output)
        )
    if (with_preprocess or softmax) and kind != "classifier":
        raise BadInput(
            "--with-preprocess/--softmax only apply to classifiers.",
            hint=f"This checkpoint is a {kind}; export it without them.",
        )
    if with_preprocess:
        spec = replace(spec, input="pixels", input_kind="pixels")
    if softmax:
        spec = replace(spec, output="probabilities", output_kind="probabilities")
    return spec


def _ae_net(meta: dict[str, Any]) -> str:
    """An autoencoder checkpoint's net: "unet" or "conv" (files older than --arch are conv)."""
    return str((meta.get("arch") or {}).get("net", "conv"))


def resolve_checkpoint(ref: str | Path) -> Path:
    """A run folder (best, else last checkpoint) or a checkpoint file -> the checkpoint path."""
    from ..runs import checkpoint_of

    return checkpoint_of(ref)


def input_shape(meta: dict[str, Any], spec: IOSpec) -> tuple[int, ...]:
    """Per-sample input shape: (C, H, W) for images/pixels, (D,) for latents."""
    arch = meta.get("arch") or {}
    if spec.input_kind == "latent":
        size = arch.get("nz") or arch.get("latent")
        if not size:
            raise BadInput("The checkpoint's arch has no latent size (nz / latent).", hint=_REBUILD)
        return (int(size),)
    pre = meta.get("preprocess") or {}
    side = pre.get("crop") or pre.get("resize") or arch.get("image_size")
    channels = arch.get("channels") or pre.get("channels") or arch.get("in_chans") or 3
    if not side:
        raise BadInput("The checkpoint does not say its input image size.", hint=_REBUILD)
    return (int(channels), int(side), int(side))


_REBUILD = "Re-train with this dlpipe version: its checkpoints carry arch and preprocess."


def build_exportable(
    ckpt: Any, part: str = "full", with_preprocess: bool = False, softmax: bool = False
) -> Any:
    """The eval-mode module to export (or to use as the reference) for a loaded checkpoint."""
    from ..models import build_from_meta

    meta = ckpt.meta
    io_spec(meta, part, with_preprocess, softmax)  # validates the combination
    group = meta.get("export_group", "model")
    if group not in ckpt.weights:
        raise BadInput(
            f"Checkpoint {ckpt.path} has no weights group {group!r} (has: {sorted(ckpt.weights)}).",
            hint="The file is not a finished dlpipe training checkpoint.",
        )
    model = build_from_meta(meta)
    try:
        model.load_state_dict(ckpt.weights[group], strict=True)
    except RuntimeError as exc:
        raise BadInput(
            f"Weights in {ckpt.path} do not fit the architecture it describes: {str(exc)[:300]}",
            hint="The checkpoint was written by a different dlpipe version or edited.",
        ) from None
    if part != "full":
        model = getattr(model, part)
    if with_preprocess or softmax:
        model = _wrap(model, meta.get("preprocess") or {}, with_preprocess, softmax)
    return model.eval()


def _wrap(model: Any, pre: dict[str, Any], with_preprocess: bool, softmax: bool):  # noqa: ANN202
    import torch

    class InGraph(torch.nn.Module):
        """Pixels 0-255 -> normalized input (optional), model, softmax (optional)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            mean = torch.tensor(pre.get("mean", [0.0]), dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(pre.get("std", [1.0]), dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", mean / std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if with_preprocess:
                x = x * self.scale - self.shift
            y = self.model(x)
            return torch.softmax(y, dim=-1) if softmax else y

    return InGraph()
