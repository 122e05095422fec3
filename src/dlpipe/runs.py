"""Run directories: `runs/<command>/<name>` with config, metrics CSV, log, checkpoints."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_text
from .console import json_safe
from .console import shown as show
from .errors import BadInput
from .locks import LOCK_NAME, lock
from .text import printable

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class RunOptions:
    """Where a training stage writes: RUNS_DIR/<command>/<name>, and whether it continues one."""

    name: str | None = None  # run name; an existing one gets a numeric suffix unless exist_ok
    runs_dir: str = str(DEFAULT_RUNS_DIR)  # parent of the run folders
    exist_ok: bool = False  # reuse the run folder `name` if it exists
    resume: bool = False  # continue `name` (or the latest run) from its last checkpoint


@dataclass
class RunDir:
    """Paths and writers of one run folder; its experiment trackers (`--log`) get every config,
    metrics row and image it writes."""

    path: Path
    # --log: the trackers to open at the first write (so a run that fails on its data leaves no
    # tracker files, and its empty folder is still removed); None on every rank but the main one
    track: str | None = field(default=None, repr=False, compare=False)
    _trackers: list[Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, command: str, name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> RunDir:
        """The folder of run `name` of `command` (RUNS_DIR/<command>/<name>), existing or not."""
        return cls(Path(runs_dir) / command / name)

    @property
    def trackers(self) -> list[Any]:
        """The run's experiment trackers, started on first use."""
        if self._trackers is None:
            from .tracking import open_trackers

            self._trackers = open_trackers(self.track, self.path) if self.track else []
        return self._trackers

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, name: str = "last") -> Path:
        """Path of a named checkpoint (`last`: where --resume continues; `best`, ...)."""
        return self.checkpoints / f"{name}.safetensors"

    def remove_stale_temp(self) -> list[str]:
        """Delete temporary files a killed save left in checkpoints/ (ours end in .tmp; the
        safetensors writer's start with .tmp); the checkpoints themselves are always whole."""
        stale = [
            p
            for p in (self.checkpoints.iterdir() if self.checkpoints.is_dir() else [])
            if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith(".tmp"))
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return [p.name for p in stale]

    def model_checkpoint(self) -> Path:
        """The checkpoint a run folder means as a model (export, sample, eval): best, else last."""
        for name in ("best", "last"):
            if self.checkpoint(name).is_file():
                return self.checkpoint(name)
        raise BadInput(
            f"{self.path} holds no checkpoints/best.safetensors or checkpoints/last.safetensors.",
            hint="Pass a finished dlpipe run folder (runs/<command>/<name>) or a .safetensors file.",
        )

    def resume_command(self, command: str) -> str:
        """The command line that continues this run (`command` as typed, e.g. `gan train`)."""
        runs_dir = self.path.parent.parent
        where = "" if runs_dir == DEFAULT_RUNS_DIR else f" --runs-dir {runs_dir}"
        return f"dlpipe {command} --resume --name {self.path.name}{where}"

    def write_config(self, config: dict[str, Any]) -> Path:
        """Save the resolved configuration as YAML."""
        import yaml

        path = write_text(self.config_path, yaml.safe_dump(_plain(config), sort_keys=False))
        for tracker in self.trackers:
            tracker.log_params(_plain(config))
        return path

    def read_config(self) -> dict[str, Any]:
        """Read the saved configuration."""
        import yaml

        return yaml.safe_load(self.config_path.read_text()) or {}

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one row (one epoch) to metrics.csv, rewriting the file atomically; trackers get
        its numbers at step `epoch`."""
        rows = self.read_metrics()
        rows.append({k: _fmt(v) for k, v in row.items()})
        self._write_metrics(rows)
        if self.track:
            from .tracking import numbers

            values, step = numbers(_plain(row)), int(row.get("epoch", len(rows)))
            for tracker in self.trackers:
                tracker.log_metrics(values, step)

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_path, buf.getvalue())

    def read_metrics(self) -> list[dict[str, str]]:
        """Rows of metrics.csv as dicts of strings ([] when there is none)."""
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, newline="") as fh:
            return list(csv.DictReader(fh))

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keep only rows of epochs < epochs_done (used on resume after a crash)."""
        rows = [r for r in self.read_metrics() if int(float(r.get("epoch", 0))) < epochs_done]
        self.metrics_path.unlink(missing_ok=True)
        if rows:  # trackers already have these rows
            self._write_metrics(rows)

    def log_image(self, tag: str, path: Path | None, step: int) -> Path | None:
        """Hand a PNG the run just wrote to the trackers; returns `path`."""
        if path is not None:
            for tracker in self.trackers:
                tracker.log_image(tag, Path(path), step)
        return path

    def close_trackers(self) -> None:
        """Flush and close the trackers (the run is over, or failed)."""
        trackers, self._trackers, self.track = self._trackers or [], [], None
        for tracker in trackers:
            tracker.close()

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {printable(message)}\n")

    def report_skipped(
        self, skipped: list[tuple[str, str]], out: Any = None, since: int = 0
    ) -> Path | None:
        """List unusable input files in skipped.txt (and warn on screen about those from index
        `since` on: the ones found later, while decoding); None when there were none."""
        if not skipped:
            return None
        fresh = skipped[since:]
        if out is not None and fresh:
            shown = "; ".join(f"{show(f)} ({show(why)})" for f, why in fresh[:3])
            more = f" and {len(fresh) - 3} more" if len(fresh) > 3 else ""
            late = " more" if since else ""
            out.warn(
                f"skipped {len(fresh)}{late} unusable file(s): {shown}{more}; list in "
                f"{self.path / 'skipped.txt'}"
            )
        buf = io.StringIO()  # a name with a tab or newline is quoted, never a forged row
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow(["file", "reason"])
        # a name that is not UTF-8 is listed as shown on screen (caf\xe9.png): see write_text
        writer.writerows([str(f), str(why)] for f, why in skipped)
        return write_text(self.path / "skipped.txt", buf.getvalue())

    def write_result(self, artifacts: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
        """The command's result (`run_dir`, `artifacts`, `metrics`), also saved as results.json."""
        result = {
            "run_dir": str(self.path),
            "artifacts": {k: str(v) for k, v in artifacts.items() if v},
            "metrics": metrics,
        }
        self.write_json("results.json", result)
        return result

    def write_json(self, name: str, data: Any) -> Path:
        """Atomically write a JSON file inside the run folder."""
        return write_text(self.path / name, json.dumps(json_safe(_plain(data)), indent=2) + "\n")


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _plain(obj: Any) -> Any:
    """Turn tuples, Paths and numpy scalars into YAML/JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def create_run_dir(
    command: str,
    name: str | None = None,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    exist_ok: bool = False,
) -> RunDir:
    """Create `runs_dir/command/name`; without `exist_ok`, an existing name gets a numeric suffix."""
    base = Path(runs_dir) / command
    name = name or "exp"
    if not _NAME_RE.match(name):
        raise BadInput(
            f"--name {name!r} is not a usable run name.",
            hint="Use letters, digits, '.', '_' and '-' (no slashes or spaces).",
        )
    path = base / name
    existed = path.is_dir()
    if not exist_ok:
        n = 2
        while path.exists():
            path = base / f"{name}{n}"
            n += 1
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
        (path / "checkpoints").mkdir(exist_ok=True)
    except OSError as exc:
        raise BadInput(
            f"Cannot create the run folder {path}: {exc.strerror}.",
            hint="Choose a writable place with --runs-dir.",
        ) from None
    lock(path)  # one writer per run folder
    if exist_ok and existed:  # a fresh run in an old folder starts its metrics and samples over
        (path / "metrics.csv").unlink(missing_ok=True)
        shutil.rmtree(path / "samples", ignore_errors=True)
    return RunDir(path)


def checkpoint_of(ref: str | Path) -> Path:
    """A run folder (its model checkpoint: best, else last) or a checkpoint file -> the file."""
    path = Path(ref)
    if path.is_dir():
        return RunDir(path).model_checkpoint()
    if not path.exists():
        raise BadInput(
            f"{path} does not exist.",
            hint="Pass a run folder (runs/<command>/<name>) or a checkpoint .safetensors file.",
        )
    return path


def latest_run(command: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> RunDir | None:
    """The most recently modified run of a command, if any."""
    base = Path(runs_dir) / command
    runs = [p for p in base.glob("*") if p.is_dir()] if base.exists() else []
    return RunDir(max(runs, key=lambda p: p.stat().st_mtime)) if runs else None


def resolve_run(ref: str | Path) -> RunDir:
    """A run folder given by path, failing clearly when it is not one."""
    path = Path(ref)
    if not path.is_dir() or not (path / "checkpoints").is_dir():
        raise BadInput(
            f"{path} is not a dlpipe run folder (expected {path}/checkpoints/).",
            hint="Pass a folder under runs/<command>/, e.g. runs/finetune/exp.",
        )
    return RunDir(path)


def run_to_resume(command: str, name: str | None, runs_dir: str | Path, display: str) -> RunDir:
    """The run folder `--resume` continues (--name, else the latest run of `command`); it must hold
    a last checkpoint written by that same command. `display` is the command as typed (`gan train`)."""
    from .checkpoint import read_meta

    base = Path(runs_dir) / command
    run = RunDir(base / name) if name else latest_run(command, runs_dir)
    if run is None or not run.checkpoint("last").exists():
        raise BadInput(
            f"--resume: no checkpoint to continue from in {run.path if run else base}.",
            hint=f"Pass --name of an existing run (see {base}/), or drop --resume.",
        )
    lock(run.path)
    made_by = read_meta(run.checkpoint("last")).get("command")
    if made_by != command:
        raise BadInput(
            f"--resume: {run.checkpoint('last')} was written by `dlpipe {made_by}`, not `dlpipe {display}`, "
            "so it cannot be continued here.",
            hint=f"Resume it with the command that made it, or pass --name of a {command} run.",
        )
    return run


def open_run(
    folder: str, display: str, cfg: Any, opts: RunOptions, explicit: set[str], dist_ctx: Any = None
) -> tuple[RunDir, Any]:
    """The run folder a training stage writes to, and the config it runs with.

    A new run: a fresh folder and `cfg` as given. `--resume`: the run it names (or the latest), its
    saved config, with the options the user gave explicitly winning; a saved config this command
    does not know, or an explicit change of what the checkpoint's shapes depend on, is refused.
    Under torchrun rank 0 picks the folder and every rank uses it."""
    from .distributed import DistContext, on_main
    from .tracking import check

    dist_ctx = dist_ctx or DistContext()
    check(getattr(cfg, "log", None))  # a missing tracker package fails before any folder exists
    if not opts.resume:
        run = on_main(
            lambda: create_run_dir(folder, opts.name, opts.runs_dir, opts.exist_ok), dist_ctx
        )
        return _track(run, cfg), cfg
    run = on_main(lambda: run_to_resume(folder, opts.name, opts.runs_dir, display), dist_ctx)
    on_main(run.remove_stale_temp, dist_ctx)
    cfg = _resumed_config(run, cfg, explicit)
    check(getattr(cfg, "log", None))
    return _track(run, cfg), cfg


def _track(run: RunDir, cfg: Any) -> RunDir:
    """Give the run the trackers `--log` names; the main process alone logs."""
    from .distributed import env_rank

    if env_rank() == 0:
        run.track = getattr(cfg, "log", None)
    return run


def _resumed_config(run: RunDir, cfg: Any, explicit: set[str]) -> Any:
    """The saved config of the run `--resume` continues, with the options typed explicitly."""
    import dataclasses

    saved = run.read_config()
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise BadInput(
            f"--resume: {run.config_path} has options this command does not know "
            f"({', '.join(unknown[:5])}); it belongs to another command or dlpipe version.",
            hint="Resume it with the command that made it, or start a new run with a new --name.",
        )
    if "stop_after" in saved:
        saved["stop_after"] = None  # an interruption is not an option to keep
    for key in sorted(explicit & known):
        new = getattr(cfg, key)
        if key in getattr(cfg, "FIXED_ON_RESUME", ()) and saved.get(key) != new:
            raise BadInput(
                f"--resume: {run.path} was trained with --{key.replace('_', '-')} "
                f"{saved.get(key)}; it cannot continue with {new}.",
                hint="Drop the option to continue the run, or start a new run with a new --name.",
            )
        saved[key] = new
    return type(cfg).from_dict(saved)


@contextmanager
def tidy_on_failure(run: RunDir) -> Iterator[None]:
    """Around a training run: when it fails (bad data, Ctrl-C before anything was written) and
    its folder holds no file yet, remove the folder, so a failed start leaves no empty run behind.
    Under torchrun only rank 0 touches the folder."""
    from .distributed import env_rank

    try:
        yield
    except BaseException:
        run.close_trackers()  # before the check below: an open event file is a file
        path = run.path
        if (
            env_rank() == 0
            and path.is_dir()
            and not any(p.is_file() and p.name != LOCK_NAME for p in path.rglob("*"))
        ):
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        run.close_trackers()
