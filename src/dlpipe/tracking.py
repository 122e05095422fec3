"""Experiment trackers: `--log tensorboard,mlflow` mirrors a run's metrics, config and images.

metrics.csv stays the record of a run; a tracker is a copy for the tool a team already watches.
The run folder owns its trackers (`RunDir.write_config`, `append_metrics` and `log_image` forward
to them), only the main process has any, and each package is imported only when asked for and
checked before the run folder exists, so a missing one costs no training time.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path
from typing import Any, Protocol

from .errors import BadInput, EnvironmentProblem


class Tracker(Protocol):
    """What a run tells an experiment tracker."""

    def log_params(self, config: dict[str, Any]) -> None:
        """The run's resolved configuration, as hyperparameters."""

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        """One metrics row (one epoch), numbers only."""

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """A PNG the run wrote (sample grid, reconstructions, confusion matrix)."""

    def close(self) -> None:
        """Flush and release files."""


def _flat(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """Hyperparameters as trackers take them: scalars kept, None and lists as text."""
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in config.items()}


class TensorBoardTracker:
    """Event files under RUN/tensorboard (view: `tensorboard --logdir runs`)."""

    def __init__(self, run_path: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_path / "tensorboard"))

    def log_params(self, config: dict[str, Any]) -> None:
        """The config in the HParams tab (same event file as the scalars) and as a text table."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(_flat(config), {}):
            self.writer.file_writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in config.items())
        self.writer.add_text("config", "| option | value |\n| --- | --- |\n" + table)

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        """One scalar per column, at the epoch's step."""
        for key, value in row.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a reader (or a crash) sees every finished epoch

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """The PNG's pixels as an image summary."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class MlflowTracker:
    """An MLflow run: in MLFLOW_TRACKING_URI when set (a server), else a local file store in
    RUN/mlruns. A resumed dlpipe run continues the same MLflow run."""

    def __init__(self, run_path: Path) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps its file store in maintenance mode behind this switch; a local store
            # needs no server or database, which is what a run folder should be.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_path / "mlruns").resolve().as_uri()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.id_file = run_path / "mlflow_run_id.txt"
        if self.id_file.is_file():
            self.run_id = self.id_file.read_text().strip()
            return
        name = f"dlpipe-{run_path.parent.name}"
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run_path.name).info.run_id
        self.id_file.write_text(self.run_id + "\n")

    def log_params(self, config: dict[str, Any]) -> None:
        """Every config field as an MLflow parameter."""
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in _flat(config).items()]
        self.client.log_batch(self.run_id, params=params)

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        """One MLflow metric per column at the epoch's step."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k.replace("(", "_").replace(")", ""), v, now, step) for k, v in row.items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """The PNG as an artifact under images/<tag>/."""
        self.client.log_artifact(self.run_id, str(path), f"images/{tag}")

    def close(self) -> None:
        """Mark the MLflow run finished."""
        self.client.set_terminated(self.run_id)


# name -> (module that must import, pip extra, tracker class)
TRACKERS: dict[str, tuple[str, str, type]] = {
    "tensorboard": ("tensorboard", "tensorboard", TensorBoardTracker),
    "mlflow": ("mlflow", "mlflow", MlflowTracker),
}


def parse(spec: str | None) -> list[str]:
    """`"tensorboard,mlflow"` -> the tracker names, checked (BadInput naming the closest)."""
    names: list[str] = []
    for raw in (spec or "").split(","):
        name = raw.strip().lower()
        if not name or name in names or name in ("none", "csv"):
            continue  # CSV is always written
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, list(TRACKERS), n=1)
            raise BadInput(
                f"--log {name!r} is not a tracker"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + ".",
                hint=f"Use one or more of {', '.join(TRACKERS)}, comma-separated "
                "(metrics.csv is always written).",
            )
        names.append(name)
    return names


def check(spec: str | None) -> list[str]:
    """The trackers `spec` asks for, each importable, or EnvironmentProblem naming the extra."""
    names = parse(spec)
    for name in names:
        module, extra, _ = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise EnvironmentProblem(
                f"--log {name} needs the {module} package, which is not installed here; "
                "nothing was trained.",
                hint=f"Install it with pip install 'dlpipe[{extra}]' (or pip install {module}), "
                f"or drop {name} from --log.",
            )
    return names


def open_trackers(spec: str | None, run_path: Path) -> list[Tracker]:
    """Start the trackers `spec` names for the run folder `run_path`."""
    return [TRACKERS[name][2](run_path) for name in check(spec)]


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numeric columns of a metrics row (text such as the stage name stays in the CSV)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue  # the epoch is the step
        out[key] = float(value)
    return out
