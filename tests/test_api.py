"""The Python API: the README's snippet runs as written (tiny sizes), returns the --json dicts,
raises DlpipeError (never SystemExit), and `import dlpipe` stays light."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dlpipe
from dlpipe.errors import BadInput, DlpipeError


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLPIPE_OFFLINE", "1")


def test_the_readme_snippet_end_to_end(image_folder: Path) -> None:
    r = dlpipe.finetune(backbone="mobilenet_v2", data="mnist5k", image_size=64, epochs=1,
                        limit=100, eval_limit=30)  # fmt: skip
    assert Path(r["run_dir"], "checkpoints", "best.safetensors").is_file()
    assert 0.0 <= r["metrics"]["held_out_acc"] <= 1.0
    json.dumps(r, allow_nan=True)  # plain data, as --json prints it

    g = dlpipe.train_gan(data="mnist5k", epochs=1, limit=128, fd_every=0)
    a = dlpipe.train_ae(data="mnist5k", noise="gaussian:0.3", epochs=1, limit=128)
    assert g["metrics"]["epochs"] == 1 and "psnr_gain_db" in a["metrics"]
    assert Path(g["run_dir"]).parent.name == "gan" and Path(a["run_dir"]).parent.name == "ae"

    e = dlpipe.export(r["run_dir"], out="exports/m.onnx")
    assert Path(e["model"]).is_file()
    v = dlpipe.validate("exports/m.onnx", latency_runs=0, n=8, batch_sizes=[1, 3])
    assert v["metrics"]["parity_passed"] is True

    p = dlpipe.predict("exports/m.onnx", [image_folder / "cat" / "0.png"])
    assert len(p["predictions"]) == 1 and p["predictions"][0]["top"]

    Path("p.yaml").write_text(
        "name: api\nstages:\n  - name: digits\n    command: data export\n"
        "    args: [digits, out/d]\n    limit: 20\n"
    )
    summary = dlpipe.run_pipeline("p.yaml")
    assert [s["status"] for s in summary["stages"]] == ["ok"]
    assert dlpipe.run_pipeline("p.yaml")["stages"][0]["status"] == "skipped"


def test_resume_continues_with_saved_options_and_explicit_ones_win() -> None:
    tiny = dict(data="digits", limit=60, batch_size=32, device="cpu", epochs=1, name="r")
    dlpipe.train_ae(**tiny, width=8, latent=4)
    again = dlpipe.train_ae(name="r", resume=True, epochs=2)  # width/latent come from the run
    assert again["metrics"]["epochs"] == 2 and again["run_dir"].endswith("r")
    with pytest.raises(BadInput, match="--resume: .* was trained with --latent 4"):
        dlpipe.train_ae(name="r", resume=True, epochs=3, latent=8)


def test_errors_are_dlpipe_errors_naming_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DlpipeError, match="no-such-folder"):
        dlpipe.train_gan(data=str(missing), epochs=1)
    with pytest.raises(BadInput, match=r"no option 'epoch' \(did you mean 'epochs'\?\)"):
        dlpipe.finetune(epoch=3)
    with pytest.raises(BadInput, match="--amp 'fp8' is not one of off, bf16, fp16"):
        dlpipe.train_ae(amp="fp8")
    assert not list(Path("runs").glob("*/*"))  # nothing started, no run folder left behind


def test_eval_through_the_api() -> None:
    r = dlpipe.finetune(backbone="mnist_cnn", weights="none", data="digits", epochs=1, limit=120,
                        eval_limit=40, image_size=8, device="cpu")  # fmt: skip
    ev = dlpipe.eval(r["run_dir"], data="digits", limit=50)
    assert 0.0 <= ev["metrics"]["accuracy"] <= 1.0


def test_sizes_are_checked_for_api_calls_too() -> None:
    """The memory check reads the built config, so a list of batch sizes (API, pipelines) is
    checked like the CLI's comma string."""
    with pytest.raises(BadInput, match="--batch-sizes .* needs at least"):
        dlpipe.validate("missing.onnx", batch_sizes=[1, 10**7])
