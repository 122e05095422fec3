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
        "ensure_torchvision()\n"
        "import torchvision, timm\n"
        "m = torchvision.models.resnet18(num_classes=3)\n"
        "y = m(torch.zeros(2, 3, 32, 32))\n"
        "print(shim_status()[0], tuple(y.shape), torch.cuda.is_available())\n"
    )
    out = _run(code)
    assert "(2, 3)" in out
    # On a CPU torch with the CUDA torchvision wheel the shim must have been needed: applied by
    # this call, or already at interpreter start by the .pth hook `make install` writes.
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


def test_pth_hook_makes_timm_import_first_in_a_fresh_interpreter(tmp_path):
    """What `make install` puts in site-packages: a user who imports timm (then torchvision)
    before ever importing dlpipe gets working models; the hook then leaves sys.meta_path."""
    from dlpipe.compat import PTH_NAME, install_pth

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    assert install_pth(site_dir) == site_dir / PTH_NAME
    code = (
        "import site, sys\n"
        f"site.addsitedir({str(site_dir)!r})  # processes the .pth exactly as at start-up\n"
        "assert 'torch' not in sys.modules  # the hook itself imports nothing heavy\n"
        "import timm, torch, torchvision\n"
        "m = timm.create_model('resnet18', pretrained=False, num_classes=3)\n"
        "y = m(torch.zeros(2, 3, 32, 32))\n"
        "from dlpipe.compat import _TorchvisionHook, shim_status\n"
        "assert not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path)\n"
        "print(tuple(y.shape), shim_status()[0], torch.version.cuda is None)\n"
    )
    out = _run(code)
    assert out.startswith("(2, 3)")
    if out.endswith("True"):  # CPU torch beside the CUDA torchvision wheel: the shim was needed
        assert out == "(2, 3) True True"


def test_pth_line_never_stops_an_interpreter(tmp_path):
    """If dlpipe is gone (uninstalled, broken), the .pth line is silent and Python starts."""
    from dlpipe.compat import PTH_LINE

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "x.pth").write_text(PTH_LINE.replace("dlpipe.compat", "no_such_pkg"))
    code = f"import site; site.addsitedir({str(tmp_path / 'site')!r}); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok" and not out.stderr
