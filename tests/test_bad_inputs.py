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
        "can result in arbitrary code execution",
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


def _with_header(made: Path, out: str, edit) -> Path:  # noqa: ANN001 - edit(header) -> None
    """A copy of the made checkpoint whose safetensors header metadata was edited by `edit`."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = made / "runs/ae/a/checkpoints/last.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        header = dict(fh.metadata())
    edit(header)
    save_file(load_file(str(src)), out, metadata=header)
    return Path(out)


def _meta_edit(**changes):  # noqa: ANN202 - returns an editor of the header
    import json

    def edit(header: dict) -> None:
        meta = json.loads(header["dlpipe.meta"])
        for key, value in changes.items():
            if value is _DROP:
                meta["arch"].pop(key, None) if key != "arch" else meta.pop("arch")
            else:
                meta["arch"][key] = value
        header["dlpipe.meta"] = json.dumps(meta)

    return edit


_DROP = object()


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (_meta_edit(latent=10**9), "meta.arch.latent = '1000000000', not an integer in 1..65536"),
        (_meta_edit(width="wide"), "meta.arch.width = 'wide', not an integer"),
        (_meta_edit(arch=_DROP), "meta.arch is missing or not a mapping"),
        (lambda h: h.update({"dlpipe.meta": "[1, 2]"}), "dlpipe.meta is a JSON list, not a dict"),
        (lambda h: h.update({"dlpipe.state": "{"}), "dlpipe.state is missing or not JSON"),
        (lambda h: h.update({"dlpipe.state": '{"o": {"__tensor__": "nope"}}'}),
         "refers to tensors the file does not hold"),
    ],
    ids=["latent-1e9", "string-width", "no-arch", "meta-list", "state-cut", "state-dangling"],
)  # fmt: skip
def test_hostile_checkpoint_headers_are_refused(cli, made, edit, phrase) -> None:
    ck = _with_header(made, "h.safetensors", edit)
    res = cli("export", ck, "--out", "h.onnx", "-q")
    assert res.exit_code == 2, res.output
    _said(res, "Checkpoint h.safetensors has a damaged or hostile header", phrase)
    assert not Path("h.onnx").exists()


def test_a_fifo_as_checkpoint_is_refused_without_hanging(cli) -> None:
    import threading

    os.mkfifo("pipe.safetensors")
    box: list = []
    worker = threading.Thread(
        target=lambda: box.append(cli("export", "pipe.safetensors", "--out", "p.onnx", "-q")),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open("pipe.safetensors", "wb"):
            pass
        pytest.fail("export blocked on a FIFO")
    assert box[0].exit_code == 2
    _said(box[0], "pipe.safetensors is not a regular file (a pipe, socket or device)")


def test_hostile_file_in_the_torch_hub_cache(tmp_path) -> None:
    """A planted pickle where torchvision's downloaded weights are cached: refused, not run."""
    from dlpipe.errors import BadInput
    from dlpipe.weights import hub_checkpoints_dir, resolve_torchvision

    hub = hub_checkpoints_dir()
    hub.mkdir(parents=True)
    with open(hub / "mobilenet_v2-b0353104.pth", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh, protocol=2)
    with pytest.raises(BadInput) as caught:
        resolve_torchvision("mobilenet_v2", "DEFAULT")
    text = caught.value.paragraph()
    assert "mobilenet_v2-b0353104.pth could not be read" in text and f"Delete {hub}" in text
    assert not Path("pwned.txt").exists()


def test_an_unwritable_cache_is_a_warning_not_a_failure(cli, monkeypatch) -> None:
    monkeypatch.setenv("DLPIPE_CACHE_DIR", "/dev/null")
    res = cli("finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--freeze", "--data",
              "digits", "--limit", "60", "--eval-limit", "20", "--epochs", "1", "--device", "cpu",
              "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    _said(res, "cannot write the feature cache in /dev/null/features", "running without it")


def test_disk_full_inside_safetensors_is_exit_3_with_the_path(monkeypatch) -> None:
    """safetensors reports ENOSPC as its own error type: it becomes the OSError the CLI explains."""
    import safetensors.torch
    import torch
    from safetensors import SafetensorError

    from dlpipe.checkpoint import save_checkpoint
    from dlpipe.errors import EnvironmentProblem
    from dlpipe.train.interrupt import save_or_explain

    def full(*args, **kwargs) -> None:  # what safetensors raises when the disk fills up
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
            '"No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    path = Path("c/last.safetensors")
    weights = {"m": {"w": torch.ones(2)}}
    with pytest.raises(EnvironmentProblem) as caught:
        save_or_explain(lambda: save_checkpoint(path, weights, {"kind": "x"}), path)
    text = caught.value.paragraph()
    assert f"Cannot write checkpoint {path}: No space left on device (" in text
    assert "free there" in text
    assert not list(Path("c").glob("*"))  # no temp file left


def _meta_json(edit):  # noqa: ANN001, ANN202 - edit(meta dict) -> new JSON-able value
    def apply(model) -> None:  # noqa: ANN001 - an onnx.ModelProto
        import json

        for prop in model.metadata_props:
            if prop.key == "dlpipe":
                prop.value = json.dumps(edit(json.loads(prop.value)))

    return apply


def _rename_input(model) -> None:  # noqa: ANN001 - an onnx.ModelProto
    old = model.graph.input[0].name
    model.graph.input[0].name = "renamed"
    for node in model.graph.node:
        node.input[:] = ["renamed" if i == old else i for i in node.input]


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (_meta_json(lambda m: [m]), "the dlpipe metadata is a JSON list, not an object"),
        (_meta_json(lambda m: {**m, "input": "image"}), "has no input description"),
        (_meta_json(lambda m: {**m, "preprocess": {**m["preprocess"], "resize": 10**6}}),
         "asks for preprocess resize = 1000000, not 1..8192"),
        (_rename_input, "names the input 'image', but the graph's inputs are ['renamed']"),
    ],
    ids=["meta-list", "input-string", "resize-1e6", "renamed-input"],
)  # fmt: skip
def test_tampered_onnx_metadata_is_refused_by_predict(cli, made, edit, phrase) -> None:
    import onnx
    from PIL import Image

    model = onnx.load(str(made / "m.onnx"))
    assert [p.key for p in model.metadata_props if p.key == "dlpipe"] == ["dlpipe"]
    edit(model)
    onnx.save(model, "t.onnx")
    Image.new("L", (8, 8), 128).save("digit.png")
    res = cli("predict", "t.onnx", "digit.png")
    assert res.exit_code == 2, res.output
    _said(res, "t.onnx: the dlpipe metadata", phrase, "Re-export it")
