"""The bad-input catalogue through the real CLI: exit code + a message a user can act on.

Data-file cases (corrupt/truncated images, modes, bombs, odd folder names, symlink loops) live in
test_data.py; pipeline files with cycles in test_pipeline.py. Here: foreign or broken checkpoints,
pickles, tampered ONNX files, out-of-range options, unwritable outputs and a full disk.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

AE = ["ae", "train", "--data", "digits", "--width", "4", "--latent", "4", "--epochs", "1",
      "--batch-size", "16", "--limit", "48", "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One tiny autoencoder run and its ONNX export, shared (read-only) by the tests."""
    from dlpipe.cli import app

    base = tmp_path_factory.mktemp("made")
    old = os.getcwd()
    os.chdir(base)
    try:
        for argv in ([*AE, "--name", "a"], ["export", "runs/ae/a", "--out", "m.onnx", "-q"]):
            res = CliRunner().invoke(app, argv, catch_exceptions=False)
            assert res.exit_code == 0, res.output
    finally:
        os.chdir(old)
    return base


def _said(res, *phrases: str) -> None:
    """The message is one paragraph, no traceback, and says each phrase (wrapping ignored)."""
    text = " ".join(res.output.split())
    assert "Traceback" not in text, text
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"


def _copy_run(made: Path, command: str, name: str) -> Path:
    dest = Path("runs") / command / name
    shutil.copytree(made / "runs/ae/a", dest)
    return dest


def test_resume_refuses_a_checkpoint_of_another_command(cli, made) -> None:
    _copy_run(made, "gan", "x")
    res = cli("gan", "train", "--resume", "--name", "x", "--quiet")
    assert res.exit_code == 2
    _said(res, "was written by `dlpipe ae`", "cannot be continued", "--name of a gan run")


def test_resume_refuses_a_foreign_config(cli, made) -> None:
    run = _copy_run(made, "ae", "y")
    (run / "config.yaml").write_text("nz: 8\nngf: 4\n")  # a gan config beside an ae checkpoint
    res = cli("ae", "train", "--resume", "--name", "y", "--quiet")
    assert res.exit_code == 2
    _said(res, "config.yaml has options this command does not know (ngf, nz)")


def test_truncated_safetensors(cli, made) -> None:
    data = (made / "runs/ae/a/checkpoints/last.safetensors").read_bytes()
    Path("cut.safetensors").write_bytes(data[: len(data) // 2])
    res = cli("export", "cut.safetensors", "--out", "c.onnx", "-q")
    assert res.exit_code == 2
    _said(res, "Checkpoint cut.safetensors is truncated or not a safetensors file")
    assert not Path("c.onnx").exists()
    Path("zero.safetensors").write_bytes(b"")
    res = cli("export", "zero.safetensors", "--out", "c.onnx", "-q")
    assert res.exit_code == 2
    _said(res, "truncated or not a safetensors file")


class _Evil:
    def __reduce__(self):
        return (open, ("pwned.txt", "w"))  # what a hostile pickle would run when loaded


def test_pickles_are_refused_without_unpickling(cli) -> None:
    with open("evil.pth", "wb") as fh:
        pickle.dump({"features.0.weight": _Evil()}, fh, protocol=2)
    res = cli("export", "evil.pth", "--out", "e.onnx", "-q")
    assert res.exit_code == 2
    _said(res, "pickle/torch.save file", "never unpickles")
    res = cli("finetune", "--backbone", "mnist_cnn_bn", "--weights", "evil.pth", "--data",
              "digits", "--limit", "20", "--epochs", "1", "--device", "cpu", "-q")  # fmt: skip
    assert res.exit_code == 2
    _said(
        res,
        "--weights evil.pth could not be read as a state dict",
        "it holds pickled Python objects (",
        "which are never unpickled",
    )
    assert not Path("pwned.txt").exists()  # nothing was unpickled


@pytest.mark.parametrize("command", ["inspect", "validate", "predict"])
def test_tampered_onnx(cli, made, command) -> None:
    from PIL import Image

    raw = bytearray((made / "m.onnx").read_bytes())
    raw[:64] = b"\xff" * 64  # the protobuf header no longer parses
    Path("bad.onnx").write_bytes(bytes(raw))
    Image.new("L", (8, 8), 128).save("digit.png")
    extra = ["digit.png"] if command == "predict" else []
    res = cli(command, "bad.onnx", *extra)
    assert res.exit_code == 2
    _said(res, "bad.onnx", "Re-export it")


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["ae", "train", "--lr", "-1"], "Invalid value for '--lr'"),
        (["ae", "train", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["gan", "train", "--lr", "-0.1"], "Invalid value for '--lr'"),
        (["finetune", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (
            ["gan", "train", "--data", "digits", "--image-size", "4", "--device", "cpu"],
            "--image-size 4 does not fit",
        ),  # fmt: skip
    ],
)
def test_out_of_range_options(cli, argv, phrase) -> None:
    res = cli(*argv)
    assert res.exit_code == 2
    _said(res, phrase)


def test_output_places_that_cannot_be_written(cli, made) -> None:
    Path("afile").write_text("not a folder")
    res = cli(*AE, "--runs-dir", "afile/runs")
    assert res.exit_code == 2
    _said(res, "Cannot create the run folder afile/runs/ae/exp", "--runs-dir")
    res = cli("export", made / "runs/ae/a", "--out", "afile/m.onnx", "-q")
    assert res.exit_code == 2
    _said(res, "Cannot write afile/m.onnx", "Nothing was written", "--out")


def _full_disk(monkeypatch, suffix: str):  # noqa: ANN202 - returns the real os.replace
    """A disk that fills up exactly when the final rename of a `suffix` file happens."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    return real


def test_full_disk_during_export_keeps_the_previous_file(cli, made, monkeypatch) -> None:
    shutil.copy(made / "m.onnx", "m.onnx")
    before = Path("m.onnx").read_bytes()
    _full_disk(monkeypatch, ".onnx")
    res = cli("export", made / "runs/ae/a", "--out", "m.onnx", "--force", "-q")
    assert res.exit_code == 3
    _said(res, "Cannot write m.onnx: No space left on device", "earlier file there is unchanged")
    assert Path("m.onnx").read_bytes() == before
    assert sorted(p.name for p in Path().iterdir()) == ["m.onnx"]  # no temp folder left


def test_full_disk_during_checkpoint_keeps_the_last_good_one(cli, made, monkeypatch) -> None:
    run = _copy_run(made, "ae", "a")
    ck = run / "checkpoints" / "last.safetensors"
    before = ck.read_bytes()
    real_replace = _full_disk(monkeypatch, ".safetensors")
    res = cli("ae", "train", "--resume", "--name", "a", "--epochs", "2", "--quiet")
    assert res.exit_code == 3
    _said(res, f"Cannot write checkpoint {ck}: No space left on device", "--resume")
    assert ck.read_bytes() == before
    assert sorted(p.name for p in ck.parent.iterdir()) == ["last.json", "last.safetensors"]
    monkeypatch.setattr(
        os, "replace", real_replace
    )  # space freed: the run continues from the intact checkpoint
    res = cli("ae", "train", "--resume", "--name", "a", "--epochs", "2", "--quiet")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command", [["ae", "train"], ["gan", "train"], ["finetune"]])
def test_a_run_that_fails_at_its_start_leaves_no_empty_folder(cli, tmp_path, command) -> None:
    res = cli(*command, "--data", str(tmp_path / "missing"), "--device", "cpu", "--name", "gone")
    assert res.exit_code == 2 and "missing" in res.stderr
    assert not list(Path("runs").glob("*/gone*"))
