"""Quality metrics: image fidelity (PSNR, SSIM) and distribution distances (Frechet distance, KID).

`image` and `distances` need only NumPy/SciPy; `features` loads mobilenet_v2 (torch) lazily.
"""

from .distances import frechet_distance, kernel_distance
from .image import psnr, ssim

__all__ = ["frechet_distance", "kernel_distance", "psnr", "ssim"]
