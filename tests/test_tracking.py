"""`--log tensorboard,mlflow`: trackers get the metrics rows, the config and the images; read back."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from tests.conftest import parse_json

TINY_AE = ["--data", "digits", "--limit", "60", "--batch-size", "32", "--device", "cpu",
           "--width", "8", "--latent", "4", "--epochs", "2", "--json", "-q"]  # fmt: skip
TINY_CLS = ["--backbone", "mnist_cnn_bn", "--weights", "none", "--data", "digits", "--limit", "120",
            "--eval-limit", "40", "--batch-size", "32", "--device", "cpu", "--epochs", "2",
            "--json", "-q"]  # fmt: skip


def _events(run_dir: str):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no event file"
    ea = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    return ea


def _csv(run_dir: str) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_finetune_tensorboard_has_metrics_config_and_confusion(cli) -> None:
    res = cli("finetune", *TINY_CLS, "--log", "tensorboard")
    assert res.exit_code == 0, res.output
    run = parse_json(res.stdout)["run_dir"]
    ea = _events(run)
    rows = _csv(run)  # the CSV is still written, and the event file holds the same numbers
    for key in ("train_loss", "val_acc"):
        logged = ea.Scalars(key)
        assert [e.step for e in logged] == [int(r["epoch"]) for r in rows] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([float(r[key]) for r in rows], rel=1e-4)
    assert "stage" not in ea.Tags()["scalars"]  # text columns stay in the CSV
    (image,) = ea.Images("confusion")
    assert image.step == 2 and image.width > 100
    assert "_hparams_/experiment" in ea.PluginTagToContent("hparams")  # the config as hparams


def test_gan_and_ae_log_their_grids_every_epoch(cli) -> None:
    res = cli("gan", "train", "--data", "digits", "--limit", "64", "--epochs", "2", "--device",
              "cpu", "--fd-every", "0", "--log", "tensorboard", "--json", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    ea = _events(parse_json(res.stdout)["run_dir"])
    assert [e.step for e in ea.Images("samples")] == [1, 2]
    assert [e.step for e in ea.Scalars("loss_d")] == [1, 2]
    res = cli("ae", "train", *TINY_AE, "--log", "tensorboard")
    assert res.exit_code == 0, res.output
    ea = _events(parse_json(res.stdout)["run_dir"])
    assert [e.step for e in ea.Images("reconstructions")] == [1, 2]
    assert len(ea.Images("reconstructions_test")) == 1


def test_mlflow_local_store_under_the_run_folder(cli, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = cli("ae", "train", *TINY_AE, "--log", "mlflow")
    assert res.exit_code == 0, res.output
    run = Path(parse_json(res.stdout)["run_dir"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    got = client.get_run((run / "mlflow_run_id.txt").read_text().strip())
    assert got.data.params["latent"] == "4" and got.info.status == "FINISHED"
    history = client.get_metric_history(got.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    arts = [a.path for a in client.list_artifacts(got.info.run_id, "images/reconstructions")]
    assert arts == ["images/reconstructions/epoch_001.png", "images/reconstructions/epoch_002.png"]


def test_missing_tracker_package_fails_before_a_run_folder_exists(cli, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    res = cli("ae", "train", *TINY_AE, "--log", "tensorboard")
    assert res.exit_code == 3
    assert "dlpipe[tensorboard]" in res.output and "nothing was trained" in res.output
    assert not Path("runs").exists() or not any(Path("runs").rglob("*"))


def test_unknown_tracker_names_the_closest(cli) -> None:
    res = cli("finetune", *TINY_CLS, "--log", "tensorbord")
    assert res.exit_code == 2 and "did you mean 'tensorboard'" in res.output
    assert not any(Path("runs").rglob("*.csv")) if Path("runs").exists() else True


def test_resume_keeps_logging_to_the_same_tracker(cli) -> None:
    base = [a if a != "2" else "1" for a in TINY_AE]  # one epoch, then resume to two
    first = cli("ae", "train", *base, "--name", "r", "--log", "tensorboard")
    assert first.exit_code == 0, first.output
    again = cli("ae", "train", "--resume", "--name", "r", "--epochs", "2", "--json", "-q")
    assert again.exit_code == 0, again.output  # --log comes from the saved config
    ea = _events(parse_json(again.stdout)["run_dir"])
    assert [e.step for e in ea.Scalars("train_loss")] == [1, 2]
