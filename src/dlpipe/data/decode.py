"""Pillow decoding that turns any common image into 8-bit L or RGB, or says why it cannot."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Pillow's own limit (~89 Mpx) warns at 1x and raises at 2x; dlpipe refuses at 1x: no image a
# vision model trains on is that large, and a decompression bomb must never be decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class BadImage(Exception):
    """An image file that cannot be used; the message says why."""


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension dlpipe decodes."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer/float grayscale -> 8-bit L, scaled by the type's range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr.astype(np.float64) / 65535.0 * 255.0
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def normalize_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert a decoded image to `mode` ('L' or 'RGB'): palettes, alpha, CMYK, 16-bit handled."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become black: the alpha is applied, not silently dropped.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != mode:
        img = img.convert(mode)
    return img


def decode(source: str | Path, mode: str | None = None) -> Image.Image:
    """Fully decode an image file (first frame), respecting EXIF orientation; raise BadImage."""
    path = Path(source)
    try:
        if path.stat().st_size == 0:
            raise BadImage("zero-byte file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(
                        f"{img.width}x{img.height} pixels exceeds the {MAX_PIXELS:,}-pixel limit "
                        "(possible decompression bomb); not decoded"
                    )
                img.seek(0)  # animated GIF/PNG/WebP: the first frame
                img.load()
                img = ImageOps.exif_transpose(img)
                native = (
                    "L"
                    if img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;16")
                    else "RGB"
                )
                return normalize_mode(img, mode or native)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image Pillow can identify") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt or truncated ({exc})") from None
