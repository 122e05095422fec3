"""Run folders, metrics files, devices and the doctor."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlpipe.errors import BadInput, EnvironmentProblem
from dlpipe.runs import create_run_dir, latest_run, resolve_run
from dlpipe.runtime import resolve_device

from .conftest import parse_json


def test_auto_increment_and_exist_ok(tmp_path):
    a = create_run_dir("finetune", runs_dir=tmp_path)
    b = create_run_dir("finetune", runs_dir=tmp_path)
    c = create_run_dir("finetune", "exp", runs_dir=tmp_path, exist_ok=True)
    assert (a.path.name, b.path.name, c.path.name) == ("exp", "exp2", "exp")
    assert latest_run("finetune", tmp_path) is not None
    assert resolve_run(b.path).path == b.path


def test_bad_run_name_and_not_a_run(tmp_path):
    with pytest.raises(BadInput, match="not a usable run name"):
        create_run_dir("gan", "../escape", runs_dir=tmp_path)
    with pytest.raises(BadInput, match="not a dlpipe run folder"):
        resolve_run(tmp_path)


def test_metrics_csv_grows_columns_and_truncates(tmp_path):
    run = create_run_dir("ae", runs_dir=tmp_path)
    run.append_metrics({"epoch": 0, "loss": 0.5})
    run.append_metrics({"epoch": 1, "loss": 0.25, "psnr": 20.0})
    rows = run.read_metrics()
    assert [r["loss"] for r in rows] == ["0.5", "0.25"] and rows[0]["psnr"] == ""
    run.truncate_metrics(1)
    assert len(run.read_metrics()) == 1
    run.write_config({"lr": 0.1, "sizes": (1, 2)})
    assert run.read_config() == {"lr": 0.1, "sizes": [1, 2]}


def test_devices():
    import torch

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInput):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EnvironmentProblem, match="no CUDA device"):
            resolve_device("cuda")


def test_doctor_json_reports_providers_that_really_run(cli):
    result = cli("doctor", "--json")
    report = parse_json(result.stdout)
    cpu = [p for p in report["providers"] if p["provider"] == "CPUExecutionProvider"]
    assert cpu and cpu[0]["runs"] is True
    assert report["torch"] and report["datasets"]["mnist5k"] is True
    assert report["onnxruntime_conflict"] is False
    assert report["distributed"]["gloo"] is True  # CPU processes for --nproc on any machine
    assert result.exit_code == 0


def test_training_lists_skipped_files_in_the_run_folder(cli, tmp_path):
    import numpy as np
    from PIL import Image

    data = tmp_path / "flat"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "broken.png").write_bytes(b"not a png")
    (data / "notes.txt").write_text("x")
    result = cli(
        "ae", "train", "--data", data, "--epochs", "1", "--image-size", "8", "--json", "--quiet"
    )
    assert result.exit_code == 0, result.output
    run_dir = parse_json(result.stdout)["run_dir"]
    listed = (Path(run_dir) / "skipped.txt").read_text()  # run_dir is relative to the test's cwd
    assert "broken.png" in listed and "notes.txt" in listed
    assert "skipped 2 unusable file(s)" in result.stderr
