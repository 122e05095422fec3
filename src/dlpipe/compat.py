"""torchvision on a CPU-only torch: a guarded shim so models, transforms and datasets import.

The torchvision wheel that matches torch 2.13.0 is a CUDA build. With the CPU torch its C extension
fails to load, and `import torchvision` then dies in `_meta_registrations.py` with
`RuntimeError: operator torchvision::nms does not exist`. Defining the two operator schemas it
registers fake kernels for makes the pure-Python parts (models, transforms, datasets) work;
`torchvision.ops` and `torchvision.io` stay unusable there, so dlpipe decodes images with Pillow.
On a normal install (extension loads) this module does nothing.

Users import torchvision and timm next to dlpipe, before dlpipe has had a chance to apply the
shim. `make install` therefore drops a one-line `dlpipe_torchvision.pth` into the environment's
site-packages: at interpreter start it registers a tiny import hook (no torch import, a few
microseconds) that runs `ensure_torchvision()` the first time anything imports torchvision, then
removes itself. `python -m dlpipe.compat --install-pth` (re)writes it; `--remove-pth` deletes it.
"""

from __future__ import annotations

import importlib.abc
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


PTH_NAME = "dlpipe_torchvision.pth"
# One line, as site.py requires; a failure (dlpipe uninstalled, an old copy) must never stop
# the interpreter from starting, hence the try.
PTH_LINE = (
    'import sys; exec("try:\\n from dlpipe.compat import install_import_hook as h; h()\\n'
    'except Exception:\\n pass")\n'
)


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs the shim just before the first `import torchvision`, then gets out of the way."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        """Apply the shim when torchvision is about to be imported; never finds anything itself."""
        if name != "torchvision":
            return None
        remove_import_hook()
        try:
            ensure_torchvision()
        except Exception:  # noqa: BLE001 - the import then fails (or works) as it would have
            pass
        return None


def install_import_hook() -> None:
    """Register the hook (idempotent; nothing to do once torchvision is imported)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def remove_import_hook() -> None:
    """Unregister the hook."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]


def install_pth(site_dir: str | Path | None = None) -> Path:
    """Write the .pth line into `site_dir` (default: this environment's site-packages)."""
    import sysconfig

    folder = Path(site_dir or sysconfig.get_paths()["purelib"])
    target = folder / PTH_NAME
    target.write_text(PTH_LINE, encoding="utf-8")
    return target


if __name__ == "__main__":
    if sys.argv[1:] == ["--install-pth"]:
        print(f"compat: wrote {install_pth()}")
    elif sys.argv[1:] == ["--remove-pth"]:
        import sysconfig

        (Path(sysconfig.get_paths()["purelib"]) / PTH_NAME).unlink(missing_ok=True)
    else:
        sys.exit("usage: python -m dlpipe.compat --install-pth | --remove-pth")
