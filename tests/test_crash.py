"""Crash safety through the real CLI: SIGKILL a training run, `--resume` it, get the same weights.

Each test starts `python -m dlpipe <command>` in a subprocess (tiny data, CPU, --deterministic),
kills it with SIGKILL as soon as its first checkpoint is on disk (so mid-epoch 2, or mid-write of
the next checkpoint), resumes it with `--resume --name`, and compares the final checkpoint tensor
by tensor with an uninterrupted run of the same options: equal bits, not just close.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlpipe.checkpoint import load_checkpoint

GAN = ["gan", "train", "--data", "digits", "--image-size", "16", "--nz", "8", "--ngf", "4",
       "--ndf", "4", "--fd-every", "0", "--batch-size", "16", "--limit", "160"]  # fmt: skip
AE = ["ae", "train", "--data", "digits", "--width", "4", "--latent", "4", "--noise",
      "gaussian:0.2", "--batch-size", "16", "--limit", "160"]  # fmt: skip
FINETUNE = ["finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--data", "digits",
            "--limit", "120", "--eval-limit", "40", "--batch-size", "16"]  # fmt: skip
COMMON = ["--device", "cpu", "--deterministic", "--quiet"]


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dlpipe", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # our own process group: a signal reaches only this run
        # a suite started in the background (`make test &`) inherits SIGINT ignored, and Python
        # then never raises KeyboardInterrupt: give the run the default a terminal gives it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} existed: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.01)


def _kill_after_first_checkpoint(argv: list[str], ck: Path) -> int:
    """Start the run, SIGKILL it once `ck` exists; returns the epoch that checkpoint holds."""
    proc = _spawn(argv)
    _wait_for(ck, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return int(load_checkpoint(ck).state["epoch"])  # the file on disk is complete and loads


def _assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert set(ca.weights) == set(cb.weights)
    for group, tensors in ca.weights.items():
        for name, t in tensors.items():
            assert torch.equal(t, cb.weights[group][name]), f"{group}/{name} differs"
    assert ca.state["epoch"] == cb.state["epoch"]


@pytest.mark.parametrize(
    ("argv", "epochs", "command"), [(GAN, 3, "gan"), (AE, 3, "ae"), (FINETUNE, 3, "finetune")]
)
def test_sigkill_then_resume_is_bit_identical(cli, argv, epochs, command) -> None:
    run = Path("runs") / command
    ck = run / "killed" / "checkpoints" / "last.safetensors"
    full = [*argv, *COMMON, "--epochs", str(epochs)]
    done = _kill_after_first_checkpoint([*full, "--name", "killed"], ck)
    assert 1 <= done <= epochs
    leftovers = [p.name for p in ck.parent.iterdir() if not p.name.startswith("last.")]
    # only cut-off temp files, if any: ours (.NAME.XXXX.tmp) or the one safetensors' Rust writer
    # makes inside it (.tmpXXXXXX, the Rust tempfile crate's naming) when the kill lands mid-save
    assert all(n.endswith(".tmp") or n.startswith(".tmp") for n in leftovers), leftovers
    (ck.parent / ".last.safetensors.stale.tmp").write_bytes(b"cut off")  # as a kill mid-save leaves
    resumed = cli(*argv[: 2 if command != "finetune" else 1], "--resume", "--name", "killed",
                  "--epochs", str(epochs), "--device", "cpu", "--quiet")  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in ck.parent.iterdir() if ".tmp" in p.name) == []  # tidied
    straight = cli(*full, "--name", "straight")
    assert straight.exit_code == 0, straight.output
    _assert_same_weights(ck, run / "straight" / "checkpoints" / "last.safetensors")
    epochs_logged = [r.split(",")[0] for r in (ck.parents[1] / "metrics.csv").read_text().split()]
    assert epochs_logged[1:] == [str(e) for e in range(1, epochs + 1)]  # no duplicated rows


def test_ctrl_c_saves_mid_epoch_checkpoint_and_says_how_to_resume(cli) -> None:
    full = [*AE, *COMMON, "--epochs", "3"]
    ck = Path("runs/ae/ctrlc/checkpoints/last.safetensors")
    proc = _spawn([*full, "--name", "ctrlc"])
    _wait_for(ck, proc)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = " ".join(err.decode().split())  # rich wraps to the terminal width
    assert proc.returncode == 130, err
    assert "dlpipe ae train --resume --name ctrlc" in err and "Traceback" not in err
    saved = load_checkpoint(ck)
    assert 1 <= saved.state["epoch"] <= 3
    resumed = cli("ae", "train", "--resume", "--name", "ctrlc", "--device", "cpu", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert cli(*full, "--name", "straight").exit_code == 0
    _assert_same_weights(ck, Path("runs/ae/straight/checkpoints/last.safetensors"))


def test_ctrl_c_in_process_before_the_first_epoch_ends(cli, monkeypatch) -> None:
    """The flag path itself: a Ctrl-C at the first step saves a resumable mid-epoch checkpoint."""
    from dlpipe.train.gan import loop as gan_loop

    real_step = gan_loop.train_step

    def step_then_ctrl_c(s, real):
        values = real_step(s, real)
        if s.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        return values

    monkeypatch.setattr(gan_loop, "train_step", step_then_ctrl_c)
    full = [*GAN, *COMMON, "--epochs", "1", "--limit", "64"]  # 4 steps: cut after the 3rd
    res = cli(*full, "--name", "cut")
    assert res.exit_code == 130
    assert "--resume --name cut" in res.stderr
    ck = load_checkpoint("runs/gan/cut/checkpoints/last.safetensors")
    assert ck.state["epoch"] == 0 and ck.state["partial"]["n"] == 3
    monkeypatch.setattr(gan_loop, "train_step", real_step)
    assert cli("gan", "train", "--resume", "--name", "cut", "--quiet").exit_code == 0
    assert cli(*full, "--name", "straight").exit_code == 0
    _assert_same_weights(
        Path("runs/gan/cut/checkpoints/last.safetensors"),
        Path("runs/gan/straight/checkpoints/last.safetensors"),
    )


PIPELINE = """\
name: soak
runs_dir: runs
stages:
  - name: data
    command: data export
    args: [digits, out/digits]
    limit: 20
    force: true
  - name: train
    command: ae train
    data: digits
    width: 4
    latent: 4
    batch_size: 16
    limit: 160
    epochs: 3
    device: cpu
    deterministic: true
"""


def test_pipeline_rerun_after_kill_resumes_the_cut_stage(cli) -> None:
    Path("p.yaml").write_text(PIPELINE)
    ck = Path("runs/ae/soak-train/checkpoints/last.safetensors")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlpipe", "run", "p.yaml", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    _wait_for(ck, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    res = cli("run", "p.yaml", "--json")  # human output (the resume line) goes to stderr
    assert res.exit_code == 0, res.output
    from tests.conftest import parse_json

    rows = {r["stage"]: r["status"] for r in parse_json(res.stdout)["stages"]}
    assert rows == {"data": "skipped", "train": "ok"}
    assert "resumed runs/ae/soak-train after epoch" in " ".join(res.stderr.split()), res.stderr
    assert load_checkpoint(ck).state["epoch"] == 3
    logged = [r.split(",")[0] for r in (ck.parents[1] / "metrics.csv").read_text().split()]
    assert logged[1:] == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["sigint", "sigterm"],
)
def test_ctrl_c_in_finetune_keeps_the_epoch_checkpoint_and_says_how_to_resume(
    cli, sig, code, said
) -> None:
    ck = Path("runs/finetune/ft/checkpoints/last.safetensors")
    proc = _spawn([*FINETUNE, *COMMON, "--epochs", "200", "--name", "ft"])
    _wait_for(ck, proc)
    os.kill(proc.pid, sig)  # SIGTERM (kill, a scheduler) stops a single process like Ctrl-C
    _, err = proc.communicate(timeout=60)
    err = " ".join(err.decode().split())
    assert proc.returncode == code, err
    done = int(load_checkpoint(ck).state["epoch"])
    assert f"the checkpoint of epoch {done} is kept in {ck}" in err and said in err
    assert "Continue with: dlpipe finetune --resume --name ft" in err and "Traceback" not in err
    resumed = cli("finetune", "--resume", "--name", "ft", "--epochs", str(done + 1), "-q")
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(ck).state["epoch"] == done + 1


def test_ctrl_c_mid_epoch_in_finetune_stops_at_a_step_boundary(cli, monkeypatch) -> None:
    """The classifier on the loop skeleton's flag: a Ctrl-C during step 3 of epoch 2 (the slow
    path: the whole model trains on pixels) lets that step finish and starts no other; the
    checkpoint of epoch 1 stays (a resume restarts at an epoch boundary), the hint says so, and
    the resumed run ends with the uninterrupted run's bits."""
    from dlpipe.train.classifier import loop as clf_loop

    real_step, started, finished = clf_loop._step, [], []

    def step_then_ctrl_c(*args):
        started.append(1)
        result = real_step(*args)
        if len(started) == 8 + 3:  # 120 images in batches of 16: 8 steps an epoch
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        finished.append(1)  # the signal only raised the flag: the step goes on to its end
        return result

    monkeypatch.setattr(clf_loop, "_step", step_then_ctrl_c)
    full = [*FINETUNE, *COMMON, "--epochs", "3"]
    res = cli(*full, "--name", "cut")
    assert res.exit_code == 130, res.output
    assert len(started) == len(finished) == 11  # stopped at the step boundary, not in a step
    ck = Path("runs/finetune/cut/checkpoints/last.safetensors")
    hint = " ".join(res.stderr.split())
    assert (
        f"interrupted in epoch 2; the checkpoint of epoch 1 is kept in {ck}. Continue with: "
        "dlpipe finetune --resume --name cut" in hint
    ), hint
    saved = load_checkpoint(ck)
    assert saved.state["epoch"] == 1 and saved.state["global_step"] == 8
    monkeypatch.setattr(clf_loop, "_step", real_step)
    assert cli("finetune", "--resume", "--name", "cut", "--quiet").exit_code == 0
    assert cli(*full, "--name", "straight").exit_code == 0
    _assert_same_weights(ck, Path("runs/finetune/straight/checkpoints/last.safetensors"))
    logged = [r.split(",")[0] for r in (ck.parents[1] / "metrics.csv").read_text().split()]
    assert logged[1:] == ["1", "2", "3"]


def test_ctrl_c_before_the_first_finetune_epoch_ends_leaves_nothing_to_resume(
    cli, monkeypatch
) -> None:
    from dlpipe.train.classifier import loop as clf_loop

    real_step = clf_loop._step

    def step_then_ctrl_c(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(clf_loop, "_step", step_then_ctrl_c)
    res = cli(*FINETUNE, *COMMON, "--epochs", "2", "--name", "first")
    assert res.exit_code == 130, res.output
    assert "there is nothing to resume" in " ".join(res.stderr.split())
    assert not Path("runs/finetune/first/checkpoints/last.safetensors").exists()
