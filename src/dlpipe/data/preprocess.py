"""Preprocessing as data: one NumPy/Pillow implementation for training, export metadata and predict.

The same `Preprocess` object is stored in checkpoints and in ONNX metadata, and `apply` is the only
code that turns a picture into model input, so the deployed path (`dlpipe predict`, no torch) cannot
drift from the training path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .decode import normalize_mode

_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class Preprocess:
    """Resize (shorter side), center crop, scale to [0,1], normalize; channel order RGB, layout NCHW."""

    resize: int | None = None  # shorter side in pixels; None keeps the size
    crop: int | None = None  # center crop side; None: no crop
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    interpolation: str = "bilinear"
    channels: int = 1  # 1 (L) or 3 (RGB); input images are converted to this
    layout: str = "NCHW"
    channel_order: str = "RGB"
    value_range: str = "0-255 pixels -> [0,1] -> (x - mean) / std"

    def __post_init__(self) -> None:
        from ..errors import BadInput

        if self.channels not in (1, 3):
            raise BadInput(
                f"Preprocess channels={self.channels}: only 1 (gray) or 3 (RGB) are supported."
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise BadInput(
                    f"Preprocess {name}={values} has {len(values)} values for {self.channels} channel(s).",
                    hint="Give one value, or one per channel.",
                )
        if any(v == 0 for v in self.std):
            raise BadInput(
                f"Preprocess std={self.std} contains 0.", hint="std values must be non-zero."
            )
        if self.interpolation not in _INTERP:
            raise BadInput(
                f"Unknown interpolation {self.interpolation!r}.",
                hint=f"Use one of: {', '.join(_INTERP)}.",
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in checkpoints and ONNX metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of to_dict; unknown keys are ignored so newer files still load."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def output_size(self) -> int | None:
        """Side of the square model input, when fixed."""
        return self.crop or self.resize

    def resize_image(self, img: Image.Image) -> Image.Image:
        """Mode conversion, resize and crop only (the pixels a `--with-preprocess` ONNX expects)."""
        img = normalize_mode(img, "L" if self.channels == 1 else "RGB")
        if self.resize:
            w, h = img.size
            if self.crop:
                scale = self.resize / min(w, h)
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
            else:
                size = (self.resize, self.resize)
            if size != img.size:
                img = img.resize(size, _INTERP[self.interpolation])
        if self.crop:
            w, h = img.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            img = img.crop((left, top, left + self.crop, top + self.crop))
        return img

    def pixels(self, img: Image.Image) -> np.ndarray:
        """uint8 CHW pixels after resize/crop."""
        arr = np.asarray(self.resize_image(img), dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N)CHW -> normalized float32."""
        x = pixels.astype(np.float32) / 255.0
        c_axis = 0 if x.ndim == 3 else 1
        shape = [1] * x.ndim
        shape[c_axis] = -1
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return (x - mean) / std

    def apply(self, img: Image.Image) -> np.ndarray:
        """PIL image -> float32 CHW model input."""
        return self.normalize(self.pixels(img))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """Several images -> float32 NCHW."""
        return (
            np.stack([self.apply(img) for img in images]) if images else np.zeros((0,), np.float32)
        )
