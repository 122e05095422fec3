"""torchvision on a CPU-only torch: a guarded shim so models, transforms and datasets import.

The torchvision wheel that matches torch 2.13.0 is a CUDA build. With the CPU torch its C extension
fails to load, and `import torchvision` then dies in `_meta_registrations.py` with
`RuntimeError: operator torchvision::nms does not exist`. Defining the two operator schemas it
registers fake kernels for makes the pure-Python parts (models, transforms, datasets) work;
`torchvision.ops` and `torchvision.io` stay unusable there, so dlpipe decodes images with Pillow.
On a normal install (extension loads) this module does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Schemas exactly as torchvision's C++ extension declares them.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_state: dict[str, object] = {"applied": False, "reason": "not checked yet", "library": None}


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        hits = sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd"))
        if hits:
            return hits[0]
    return None


def needs_shim(*, torchvision_installed: bool, op_exists: bool, extension_loads: bool) -> bool:
    """Decide whether the schemas must be defined: only when the real extension cannot provide them."""
    return torchvision_installed and not op_exists and not extension_loads


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _extension_loads(path: Path | None) -> bool:
    import torch

    if path is None:
        return False
    try:
        torch.ops.load_library(str(path))
        return True
    except (ImportError, OSError, RuntimeError):
        return False


def ensure_torchvision() -> bool:
    """Make `import torchvision` work; returns True when the shim had to be applied."""
    if _state["reason"] != "not checked yet" or "torchvision" in sys.modules:
        return bool(_state["applied"])
    installed = importlib.util.find_spec("torchvision") is not None
    op = installed and _op_exists("nms")
    loads = installed and not op and _extension_loads(_extension_path())
    if not needs_shim(torchvision_installed=installed, op_exists=op, extension_loads=loads):
        _state["reason"] = "torchvision extension available" if installed else "no torchvision"
        return False
    import torch

    lib = torch.library.Library("torchvision", "DEF")  # kept alive: dropping it undefines the ops
    for schema in _SCHEMAS.values():
        lib.define(schema)
    _state.update(applied=True, library=lib, reason="extension failed to load; schemas defined")
    return True


def shim_status() -> tuple[bool, str]:
    """(applied, reason) for `dlpipe doctor`."""
    return bool(_state["applied"]), str(_state["reason"])


def import_torchvision():  # noqa: ANN201 - returns the module
    """Import torchvision through the shim."""
    ensure_torchvision()
    import torchvision

    return torchvision


def import_timm():  # noqa: ANN201 - returns the module
    """Import timm (which imports torchvision) through the shim."""
    ensure_torchvision()
    import timm

    return timm
