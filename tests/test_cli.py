"""The command tree: help everywhere, honest 'not implemented yet', no torch on the --help path."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["finetune"],
    ["gan"],
    ["gan", "train"],
    ["gan", "sample"],
    ["ae"],
    ["ae", "train"],
    ["export"],
    ["validate"],
    ["predict"],
    ["eval"],
    ["inspect"],
    ["run"],
    ["data"],
    ["data", "list"],
    ["data", "export"],
    ["weights"],
    ["weights", "list"],
    ["weights", "import"],
    ["doctor"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "root")
def test_help_for_every_command(cli, args):
    result = cli(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # the docstring is the help: each command explains itself in more than its name
    assert len(result.output.split()) > 12


def test_version(cli):
    from dlpipe import __version__

    result = cli("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_option_is_usage_error(cli):
    result = cli("data", "list", "--no-such-option")
    assert result.exit_code == 2


def test_help_path_imports_no_heavy_modules():
    code = (
        "import sys; from typer.testing import CliRunner; from dlpipe.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0;"
        "heavy = [m for m in ('torch', 'torchvision', 'timm', 'onnxruntime', 'onnx') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_python_dash_m_works():
    out = subprocess.run(
        [sys.executable, "-m", "dlpipe", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "dlpipe" in out.stdout
