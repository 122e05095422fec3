"""`dlpipe predict`: the deployed path, proven to run with torch unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import parse_json
from tests.test_export_helpers import (  # noqa: F401
    tiny_builders,
    write_autoencoder_run,
    write_classifier_run,
    write_generator_run,
)

pytestmark = pytest.mark.usefixtures("tiny_builders")

# Runs `dlpipe predict` through the real Typer app in a fresh interpreter where `import torch`
# (and torchvision/timm) raises ImportError, then reports which heavy modules got imported.
NO_TORCH = """
import json, sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None  # import raises ImportError
from typer.testing import CliRunner
from dlpipe.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                  "loaded": [m for m in ("torch", "onnx") if sys.modules.get(m) is not None]}))
"""


def _no_torch(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_predict_without_torch_matches_validation(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    assert cli("export", run, "--exporter", "torchscript", "--quiet").exit_code == 0
    (tmp_path / "notes.txt").write_text("not an image")
    res = _no_torch(
        "predict",
        "exports/tiny.onnx",
        image_folder / "cat",
        tmp_path / "notes.txt",
        "--json",
        "--top-k",
        "2",
    )
    assert res["code"] == 0, res
    assert res["loaded"] == []  # neither torch nor even the onnx package on the deployed path
    payload = parse_json(res["stdout"])
    rows = payload["predictions"]
    assert len(rows) == 6 and payload["provider"] == "CPUExecutionProvider"
    assert all(len(r["top"]) == 2 and r["top"][0]["class"] in ("bird", "cat", "dog") for r in rows)
    # the same answer as the torch model on the same files through the same preprocessing
    import torch

    from dlpipe.checkpoint import load_checkpoint
    from dlpipe.data import Preprocess
    from dlpipe.data.decode import decode
    from dlpipe.export.spec import build_exportable

    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    pre = Preprocess.from_dict(ckpt.meta["preprocess"])
    x = torch.from_numpy(pre.batch([decode(Path(r["file"])) for r in rows]))
    with torch.no_grad():
        probs = torch.softmax(build_exportable(ckpt)(x), -1).numpy()
    got = np.array([r["top"][0]["probability"] for r in rows])
    assert np.allclose(got, probs.max(-1), atol=1e-5)
    assert [r["top"][0]["index"] for r in rows] == probs.argmax(-1).tolist()


def test_predict_human_output_and_bad_image(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    assert cli("export", run, "--exporter", "torchscript", "--quiet").exit_code == 0
    Path("broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = cli("predict", "exports/tiny.onnx", image_folder / "dog" / "0.png", "broken.png")
    assert result.exit_code == 0, result.output
    assert "0.png:" in result.stdout and "skipped broken.png" in result.stderr
    assert "1 images on CPUExecutionProvider" in result.stdout


def test_autoencoder_writes_reconstructions_generator_points_to_gan_sample(cli, tmp_path):
    ae = write_autoencoder_run(tmp_path)
    assert cli("export", ae, "--exporter", "torchscript", "--quiet").exit_code == 0
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save("digit.png")
    res = _no_torch("predict", "exports/tiny.onnx", "digit.png", "--out", "recon", "--json")
    assert res["code"] == 0, res
    row = parse_json(res["stdout"])["predictions"][0]
    img = Image.open(row["reconstruction"])
    assert img.size == (8, 8) and img.mode == "L"

    gen = write_generator_run(tmp_path)
    assert (
        cli(
            "export", gen, "--exporter", "torchscript", "--quiet", "--out", "exports/g.onnx"
        ).exit_code
        == 0
    )
    result = cli("predict", "exports/g.onnx", "digit.png")
    assert result.exit_code == 2 and "gan sample" in result.stderr


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="onnxruntime-gpu is installed",
)
def test_predict_refuses_a_provider_that_does_not_run(cli, tmp_path, image_folder):
    run = write_classifier_run(tmp_path, image_folder)
    assert cli("export", run, "--exporter", "torchscript", "--quiet").exit_code == 0
    result = cli("predict", "exports/tiny.onnx", image_folder, "--provider", "cuda")
    assert (
        result.exit_code == 3  # an unavailable provider is this machine's problem (README: 3)
        and "CUDAExecutionProvider is not in this onnxruntime" in result.stderr
    )


def test_reconstructions_of_inputs_sharing_a_name_do_not_overwrite_each_other(cli, tmp_path):
    ae = write_autoencoder_run(tmp_path)
    assert cli("export", ae, "--exporter", "torchscript", "--quiet").exit_code == 0
    inputs = {"a/x.png": 10, "b/x.png": 200, "b/x.jpg": 90, "y.png": 30}
    for name, value in inputs.items():
        Path(name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(name)
    res = _no_torch("predict", "exports/tiny.onnx", "a", "b", "y.png", "--out", "recon", "--json")
    assert res["code"] == 0, res
    rows = {Path(r["file"]).as_posix(): r for r in parse_json(res["stdout"])["predictions"]}
    recon = Path("recon").resolve()
    written = {Path(r["reconstruction"]).resolve().relative_to(recon).as_posix()
               for r in rows.values()}  # fmt: skip
    # a name shared by three files: the folder tells a/ from b/, only the extension b/x.png from
    # b/x.jpg, so all three carry both; y.png is alone and keeps its stem
    assert written == {"a/x_png.reconstruction.png", "b/x_png.reconstruction.png",
                       "b/x_jpg.reconstruction.png", "y.reconstruction.png"}  # fmt: skip
    assert len({Image.open(r["reconstruction"]).tobytes() for r in rows.values()}) == 4


def test_output_names_stay_unique_when_a_stem_looks_like_a_made_up_name(tmp_path):
    from dlpipe.export.predict import output_names

    files = [tmp_path / n for n in ("x.png", "x.jpg", "x_png.png", "x.png")]
    assert output_names(files) == ["x_png", "x_jpg", "x_png~2", "x_png"]
