"""The torchvision shim: applied only when the C extension cannot load, inert otherwise."""

from __future__ import annotations

import subprocess
import sys

from dlpipe.compat import needs_shim


def test_decision_table():
    assert needs_shim(torchvision_installed=True, op_exists=False, extension_loads=False)
    assert not needs_shim(torchvision_installed=True, op_exists=False, extension_loads=True)
    assert not needs_shim(torchvision_installed=True, op_exists=True, extension_loads=False)
    assert not needs_shim(torchvision_installed=False, op_exists=False, extension_loads=False)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_shim_makes_torchvision_and_timm_import_on_this_machine():
    code = (
        "import torch\n"
        "from dlpipe.compat import ensure_torchvision, shim_status\n"
        "applied = ensure_torchvision()\n"
        "import torchvision, timm\n"
        "m = torchvision.models.resnet18(num_classes=3)\n"
        "y = m(torch.zeros(2, 3, 32, 32))\n"
        "print(applied, tuple(y.shape), torch.cuda.is_available())\n"
    )
    out = _run(code)
    assert "(2, 3)" in out
    # On a CPU torch with the CUDA torchvision wheel the shim must have been needed.
    import torch

    if torch.version.cuda is None:
        assert out.startswith("True")


def test_shim_does_nothing_when_the_operators_exist():
    # A normal install: the extension registered torchvision::nms before we look.
    code = (
        "import torch\n"
        "lib = torch.library.Library('torchvision', 'DEF')\n"
        "lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "from dlpipe.compat import ensure_torchvision, shim_status\n"
        "print(ensure_torchvision(), shim_status()[0])\n"
    )
    assert _run(code) == "False False"
