"""Faults and bugs at the CLI boundary: internal errors (exit 70 + crash.log), run-folder locks,
SIGTERM, and restarting a run folder's metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlpipe.cli.common import command
from dlpipe.errors import EXIT_INTERNAL

from .conftest import lock_held_elsewhere


def _app(fn) -> typer.Typer:  # noqa: ANN001 - a command function
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(command(fn))
    app.command("noop")(lambda: None)  # two commands: the first is invoked by name
    return app


def _run(app: typer.Typer, *argv: str):  # noqa: ANN202 - a click Result
    return CliRunner().invoke(app, list(argv), catch_exceptions=False)


def test_a_bug_is_one_paragraph_exit_70_and_a_crash_log_in_the_cache(tmp_path) -> None:
    def boom() -> None:
        {}["missing key"]  # noqa: B018 - a bug, as a user would meet it

    res = _run(_app(boom), "boom")
    assert res.exit_code == EXIT_INTERNAL == 70
    text = " ".join(res.stderr.split())
    assert "Traceback" not in text
    assert "internal error in boom: KeyError: 'missing key'" in text
    logs = list((tmp_path / ".cache" / "dlpipe" / "crash").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in res.stderr
    log = logs[0].read_text()
    assert "Traceback (most recent call last)" in log and "KeyError: 'missing key'" in log


def test_a_bug_during_a_run_leaves_its_crash_log_in_the_run_folder() -> None:
    from dlpipe.runs import create_run_dir

    def train() -> None:
        create_run_dir("ae", "x", "runs")
        raise ValueError("shapes do not match")

    res = _run(_app(train), "train")
    assert res.exit_code == 70
    assert Path("runs/ae/x/crash.log").is_file()
    assert "runs/ae/x/crash.log" in "".join(res.stderr.split())
    assert "ValueError: shapes do not match" in Path("runs/ae/x/crash.log").read_text()
    assert not Path("runs/ae/x/.lock").exists()  # the command's lock went with it


def test_dlpipe_errors_and_usage_errors_keep_their_codes() -> None:
    from dlpipe.errors import EnvironmentProblem

    def env() -> None:
        raise EnvironmentProblem("no [bold]GPU[/bold] here.")

    res = _run(_app(env), "env")
    assert res.exit_code == 3
    assert "no [bold]GPU[/bold] here." in res.stderr  # markup in messages is shown, not applied
    res = _run(_app(env), "env", "--nope")
    assert res.exit_code == 2

    def relay() -> None:  # e.g. --nproc relays the exit code of the torchrun it ran
        raise typer.Exit(130)

    assert _run(_app(relay), "relay").exit_code == 130


def test_a_full_disk_anywhere_is_exit_3_with_the_path_not_a_bug() -> None:
    """Any write that hits ENOSPC (here a plain atomic write, as plots or reports do) is an
    environment problem: exit 3, the file and the free space, no crash log."""
    import errno

    from dlpipe.atomic import atomic_path

    def report() -> None:
        with atomic_path("out/report.md") as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the disk filled up here

    res = _run(_app(report), "report")
    assert res.exit_code == 3
    text = " ".join(res.stderr.split())
    assert "Cannot write out/report.md: No space left on device (" in text and "free there" in text
    assert sorted(p.name for p in Path("out").iterdir()) == []  # no temp file left
    assert not Path(".cache/dlpipe/crash").exists()


def test_a_run_folder_has_one_writer_at_a_time(tmp_path) -> None:
    from dlpipe.errors import BadInput
    from dlpipe.locks import LOCK_NAME, lock, mark, release_since

    folder = tmp_path / "runs" / "ae" / "x"
    with lock_held_elsewhere(str(folder)) as pid:
        with pytest.raises(BadInput) as err:
            lock(folder)
        assert f"in use by process {pid}" in err.value.paragraph()
    # the holder died without cleaning up: its lock file is stale and is taken over
    assert (folder / LOCK_NAME).exists()
    here = mark()
    lock(folder)
    assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    release_since(here)
    assert not (folder / LOCK_NAME).exists()


def test_two_runs_with_one_name_do_not_interleave(cli, tmp_path) -> None:
    """A second `--exist-ok` run of a folder in use is refused (exit 2) and writes nothing there."""
    with lock_held_elsewhere("runs/ae/x") as pid:
        res = cli("ae", "train", "--data", "digits", "--name", "x", "--exist-ok", "--epochs", "1",
                  "--limit", "32", "--device", "cpu", "-q")  # fmt: skip
        assert res.exit_code == 2
        assert f"Run folder runs/ae/x is in use by process {pid}" in " ".join(res.stderr.split())
        assert sorted(p.name for p in Path("runs/ae/x").iterdir()) == [".lock", "checkpoints"]


def test_exist_ok_restarts_metrics_instead_of_appending(cli) -> None:
    argv = ["ae", "train", "--data", "digits", "--width", "4", "--latent", "4", "--epochs", "1",
            "--batch-size", "16", "--limit", "48", "--device", "cpu", "-q", "--name", "m"]  # fmt: skip
    assert cli(*argv).exit_code == 0
    res = cli(*argv, "--exist-ok")
    assert res.exit_code == 0, res.output
    rows = Path("runs/ae/m/metrics.csv").read_text().splitlines()
    assert len(rows) == 2, rows  # header + one epoch, not two runs' epochs
    assert not Path("runs/ae/m/.lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_training_saves_and_exits_143(tmp_path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlpipe", "ae", "train", "--data", "digits", "--width", "4",
         "--latent", "4", "--epochs", "200", "--batch-size", "8", "--device", "cpu",
         "--name", "t", "-q"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 60
    metrics = Path("runs/ae/t/metrics.csv")
    while not metrics.exists() and time.time() < deadline:  # one epoch done: mid-training now
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    text = " ".join(err.split())
    assert "Traceback" not in text
    assert "checkpoint saved to runs/ae/t/checkpoints/last.safetensors" in text
    assert "dlpipe ae train --resume --name t" in text and "terminated" in text


def test_native_banners_cannot_break_doctor_json() -> None:
    """What onnxruntime's C++ code prints to fd 1 inside the probe lands on stderr, so the one
    JSON object stays alone on stdout (here a native write stands in for its EP Error banner)."""
    code = (
        "import os, dlpipe.doctor as d\n"
        "from dlpipe.export.providers import native_stdout_to_stderr\n"
        "real = d.probe_providers\n"
        "def noisy():\n"
        "    with native_stdout_to_stderr():\n"
        "        os.write(1, b'*************** EP Error ***************\\n')\n"
        "    return real()\n"
        "d.probe_providers = noisy\n"
        "from dlpipe.cli import app\n"
        "app(['doctor', '--json'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert "providers" in report and "EP Error" in out.stderr


def test_under_raw_torchrun_the_paragraph_is_printed_once_and_names_the_cause(tmp_path) -> None:
    """Rank 0 alone prints dlpipe's paragraph; torchrun's own failure report (which it always
    prints) quotes that paragraph instead of "<N/A>"; no rank prints a Python traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "dlpipe", "gan", "train", "--device", "cpu", "--data", "./missing"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.count("error: ") == 1, out.stderr  # one rank speaks
    report = out.stderr[out.stderr.index("Failures:") if "Failures:" in out.stderr else 0 :]
    assert "dlpipe: " in report and "missing" in report and "(exit code 2)" in report, report
    assert "<N/A>" not in out.stderr


# --- files that vanish or change while a run decodes them ----------------------------------------


def _digit_folder(root: Path, per: int = 12) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (root / str(c)).mkdir(parents=True)
        for i in range(per):
            arr = rng.integers(0, 80, (16, 16)) + 80 * c
            Image.fromarray(arr.astype(np.uint8)).save(root / str(c) / f"{i:02d}.png")
    return root


def _vandalise_after_opening(monkeypatch, module: str, gone: float, garbage: float) -> dict:  # noqa: ANN001
    """Patch `module.open_source` so that, right after the data set is opened (its index read,
    nothing decoded yet), a share of its files is deleted and another share overwritten with
    garbage: what another process or a sync tool does to a folder during a run."""
    import importlib

    target = importlib.import_module(module)
    real, hit = target.open_source, {"gone": [], "garbage": []}

    def opened(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        ds = real(*args, **kwargs)
        files = sorted(ds.paths)
        for p in files[: int(gone * len(files))]:
            p.unlink()
            hit["gone"].append(str(p))
        for p in files[len(files) - int(garbage * len(files)) :]:
            p.write_bytes(b"garbage, not a PNG any more")
            hit["garbage"].append(str(p))
        return ds

    monkeypatch.setattr(target, "open_source", opened)
    return hit


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("dlpipe.train.images", ["ae", "train", "--width", "4", "--latent", "4"]),
        ("dlpipe.train.classifier.session",
         ["finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--image-size", "16"]),
    ],
)  # fmt: skip
def test_files_deleted_or_garbled_during_a_run_are_skipped_and_listed(
    cli, monkeypatch, module, argv
) -> None:
    import csv
    import json

    from dlpipe.checkpoint import load_checkpoint

    _digit_folder(Path("d"))
    hit = _vandalise_after_opening(monkeypatch, module, gone=0.2, garbage=0.1)
    res = cli(*argv, "--data", "d", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
              "--name", "v", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    json.loads(res.stdout, parse_constant=pytest.fail)
    run = Path("runs", argv[0], "v")
    with open(run / "skipped.txt", newline="") as fh:
        listed = dict(list(csv.reader(fh, delimiter="\t"))[1:])
    assert len(hit["gone"]) == 7 and len(hit["garbage"]) == 3
    assert {f: listed.get(f) for f in hit["gone"]} == dict.fromkeys(
        hit["gone"], "vanished since the data set was opened"
    )
    assert {f: listed.get(f) for f in hit["garbage"]} == dict.fromkeys(
        hit["garbage"], "changed since the data set was opened"
    )
    said = " ".join(res.stderr.split())  # named on screen too, as found (train, val, test)
    told = 0  # "skipped N": N so far; "skipped N more": N found since the last warning
    for n, more in re.findall(r"skipped (\d+)( more)? unusable file\(s\)", said):
        told = told + int(n) if more else max(told, int(n))
    assert told == 10, said
    assert "(vanished since the data set was opened)" in said
    assert f"list in {run}/skipped.txt" in said
    load_checkpoint(run / "checkpoints/last.safetensors")  # whole, not half-written
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_a_folder_mostly_deleted_during_a_run_is_a_clear_error(cli, monkeypatch) -> None:
    _digit_folder(Path("d"))
    _vandalise_after_opening(monkeypatch, "dlpipe.train.images", gone=0.7, garbage=0.0)
    res = cli("ae", "train", "--width", "4", "--latent", "4", "--data", "d", "--epochs", "1",
              "--device", "cpu", "--name", "v")  # fmt: skip
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "Traceback" not in text and "the data set looks mostly unusable" in text
    assert "vanished or changed" in text
    assert not Path("runs/ae/v/checkpoints/last.safetensors").exists()
