"""`gan train` / `ae train` as two Gloo processes (`--nproc 2`) against one process.

The 2-process runs are real subprocesses (torchrun through `--nproc`); the 1-process runs use the
same options in-process. `--batch-size 11` makes the global batches split unevenly (6 + 5 rows),
so the per-process loss weighting (`ctx.share`) is exercised, not just an even split; the GAN run
also has --d-steps 2 (no_sync real pass), --ema (plain export copy) and fd/kid on rank 0 between
epochs (rank 0's random numbers are shared back).

Tolerance: with BatchNorm synchronised across the processes both runs compute the same maths; they
differ only in float32 rounding (DistBatchNorm's two-pass statistics vs torch's kernel,
convolutions over half batches, the gradient all-reduce): measured <= 6e-8 on the weights after
the 12 steps these runs take. A LeakyReLU pre-activation within ~1e-9 of zero can land on the
other side of the kink in one run (seen once in a 25-step run: 2e-6 after that step), so the bound
is 1e-5; a real mistake is far above it (measured: unweighted uneven split 5e-4, per-process
BatchNorm statistics 1e-3).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlpipe.checkpoint import load_checkpoint
from dlpipe.models import build_from_meta
from tests.conftest import parse_json

TOL = 1e-5
GAN = ["gan", "train", "--data", "digits", "--image-size", "16", "--nz", "8", "--ngf", "4",
       "--ndf", "4", "--fd-every", "0", "--batch-size", "11", "--limit", "64", "--device", "cpu",
       "--quiet"]  # fmt: skip
AE = ["ae", "train", "--data", "digits", "--width", "4", "--latent", "4", "--noise",
      "gaussian:0.3", "--batch-size", "11", "--limit", "64", "--device", "cpu", "--quiet"]  # fmt: skip


def _two_processes(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dlpipe", *args, "--nproc", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path.cwd(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _ck(command: str, name: str):
    return load_checkpoint(Path("runs") / command / name / "checkpoints" / "last.safetensors")


def _assert_close_weights(command: str, a: str, b: str) -> None:
    ca, cb = _ck(command, a), _ck(command, b)
    assert set(ca.weights) == set(cb.weights)
    assert ca.state["step"] == cb.state["step"] and ca.state["epoch"] == cb.state["epoch"]
    for group, tensors in ca.weights.items():
        worst = max((t.double() - cb.weights[group][k].double()).abs().max().item()
                    for k, t in tensors.items())  # fmt: skip
        assert worst <= TOL, f"{command} {a} vs {b}: {group} differs by {worst:.3g}"


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def _assert_one_writer(command: str, multi: str, single: str) -> None:
    """Only rank 0 wrote: the same files as the 1-process run, nothing else in runs/ or here,
    and no log line written twice."""
    runs = Path("runs") / command
    assert sorted(p.name for p in runs.iterdir()) == sorted([multi, single])
    assert _files(runs / multi) == _files(runs / single)
    assert [p.name for p in Path.cwd().iterdir() if p.name not in ("runs", ".cache")] == []
    lines = [len((runs / n / "log.txt").read_text().splitlines()) for n in (multi, single)]
    assert lines[0] == lines[1]


def _metric_rows(command: str, name: str, keys: tuple[str, ...]) -> list[list[float]]:
    import csv

    with open(Path("runs") / command / name / "metrics.csv", newline="") as fh:
        return [[float(r[k]) for k in keys] for r in csv.DictReader(fh)]


def test_gan_two_processes_match_one(cli) -> None:
    # fd/kid after epoch 1 runs on rank 0 alone and draws random numbers there (feature model
    # init): the processes must still draw the same noise in epoch 2
    args = [
        *GAN,
        "--epochs",
        "2",
        "--d-steps",
        "2",
        "--ema",
        "--fd-every",
        "1",
        "--fd-images",
        "16",
    ]
    proc = _two_processes(*args, "--name", "two", "--json")
    result = parse_json(proc.stdout)  # one result, from rank 0
    assert Path(result["run_dir"]) == Path("runs/gan/two")
    assert cli(*args, "--name", "one").exit_code == 0
    _assert_close_weights("gan", "two", "one")
    _assert_one_writer("gan", "two", "one")
    keys = ("loss_d", "loss_g", "d_x", "d_g_z")  # global means: the same numbers
    for r2, r1 in zip(
        _metric_rows("gan", "two", keys), _metric_rows("gan", "one", keys), strict=True
    ):
        assert r2 == pytest.approx(r1, abs=1e-5)
    # the other direction of a world-size change: 1 process for epoch 1, then 2 to finish
    assert cli(*args, "--epochs", "1", "--name", "grow").exit_code == 0
    _two_processes("gan", "train", "--resume", "--name", "grow", "--epochs", "2", "--device", "cpu")
    _assert_close_weights("gan", "grow", "one")


def test_ae_two_processes_match_one_and_resume_in_one(cli) -> None:
    _two_processes(*AE, "--epochs", "1", "--name", "split")
    assert cli(*AE, "--epochs", "1", "--name", "one").exit_code == 0
    _assert_close_weights("ae", "split", "one")
    _assert_one_writer("ae", "split", "one")
    [loss2], [loss1] = (_metric_rows("ae", n, ("train_loss",)) for n in ("split", "one"))
    assert loss2 == pytest.approx(loss1, abs=1e-6)  # the global mean, not rank 0's
    # the 2-process checkpoint continues in one process, as if it had been one all along
    res = cli(
        "ae", "train", "--resume", "--name", "split", "--epochs", "2", "--device", "cpu", "-q"
    )
    assert res.exit_code == 0, res.output
    assert cli(*AE, "--epochs", "2", "--name", "straight").exit_code == 0
    _assert_close_weights("ae", "split", "straight")
    assert [r[0] for r in _metric_rows("ae", "split", ("epoch",))] == [1, 2]


@pytest.mark.parametrize(
    ("argv", "amp"), [(GAN, "bf16"), (GAN, "fp16"), (AE, "bf16"), (AE, "fp16")]
)
def test_amp_runs_on_cpu_with_finite_losses_and_loadable_checkpoints(cli, argv, amp) -> None:
    command = argv[0]
    res = cli(*argv, "--epochs", "1", "--amp", amp, "--name", "amp", "--json")
    assert res.exit_code == 0, res.output
    m = parse_json(res.stdout)["metrics"]
    losses = [m["loss_d"], m["loss_g"]] if command == "gan" else [m["train_loss"], m["psnr_db"]]
    assert all(math.isfinite(v) for v in losses), m
    ck = _ck(command, "amp")
    model = build_from_meta(ck.meta)
    model.load_state_dict(ck.weights[ck.meta["export_group"]])  # strict: plain keys
    if amp == "fp16":  # loss scales are saved, and restored on --resume: as if never stopped
        assert set(ck.state["scalers"]) == ({"d", "g"} if command == "gan" else {"model"})
        res = cli(command, "train", "--resume", "--name", "amp", "--epochs", "2", "--amp", "fp16",
                  "--device", "cpu", "-q")  # fmt: skip
        assert res.exit_code == 0, res.output
        assert cli(*argv, "--epochs", "2", "--amp", amp, "--name", "straight").exit_code == 0
        resumed, straight = _ck(command, "amp"), _ck(command, "straight")
        assert resumed.state["scalers"] == straight.state["scalers"]
        for group, tensors in straight.weights.items():
            for k, t in tensors.items():
                assert torch.equal(resumed.weights[group][k], t), f"{group}/{k}"


@pytest.mark.parametrize("argv", [GAN, AE])
def test_unknown_amp_and_one_gpu_for_two_processes_are_exit_2(cli, argv) -> None:
    res = cli(*argv, "--amp", "fp8")
    assert res.exit_code == 2 and "--amp" in res.stderr
    res = cli(*argv[:2], "--nproc", "2", "--device", "cuda:1")
    assert res.exit_code == 2 and "--nproc 2" in res.stderr
