"""`dlpipe finetune` under DDP: real 2-process Gloo runs (`--nproc 2`) against one process.

A 2-process run computes the same global batches as one process (rows split rank::2, each rank's
loss weighted by its share), so the weights agree up to float32 summation order. Tolerance, for
every tensor of the checkpoint: max |a - b| <= 1e-5 * max(1, max |b|). Measured: parameters differ
by <= 1e-7, BatchNorm running statistics by ~1e-6 of their scale (1.2e-5 on variances of 18):
they average the outputs of a 9216-wide dot product, whose float32 rounding (~1.2e-7 *
sqrt(9216) of its scale) depends on how the matmul is blocked for 16 rows instead of 32 and on
the thread count; BatchNorm sums per rank are all-reduced. Real mistakes are orders of magnitude
larger (measured on the BatchNorm run): per-rank dropout masks move weights by 0.1 and running
means by 4.5, unsynced BatchNorm (--no-sync-bn) by 0.04 and 2.4.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlpipe.checkpoint import load_checkpoint
from tests.conftest import parse_json

DIGITS = ["--weights", "none", "--data", "digits", "--limit", "120", "--eval-limit", "40",
          "--batch-size", "32", "--device", "cpu", "--epochs", "2"]  # fmt: skip
CACHED = [
    "--backbone",
    "mnist_cnn",
    "--freeze",
    *DIGITS,
]  # frozen backbone: the head trains on features
# The whole net trains (BatchNorm synced across ranks, dropout masks of the global batch). SGD with
# momentum: Adam divides each gradient element by its own size, so elements whose gradient is
# ~1e-9 turn float32 summation noise into update differences of a fair share of the lr.
SLOW = ["--backbone", "mnist_cnn_bn", *DIGITS, "--no-freeze", "--optimizer", "momentum",
        "--lr", "0.05"]  # fmt: skip


def _two_processes(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dlpipe", "finetune", *args, "--nproc", "2", "--json", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path.cwd(),
                         timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _last(name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(f"runs/finetune/{name}/checkpoints/last.safetensors")).weights[
        "model"
    ]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # plain keys: no "module." / "_orig_mod." prefixes
    for k in a:
        scale = max(1.0, float(b[k].abs().max())) if b[k].numel() else 1.0
        gap = float((a[k].double() - b[k].double()).abs().max()) if b[k].numel() else 0.0
        assert gap <= 1e-5 * scale, (k, gap, scale)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_two_processes_share_feature_extraction_and_match_one_process(cli, monkeypatch) -> None:
    out = _two_processes(*CACHED, "--name", "two")
    res = parse_json(out.stdout)  # one JSON line: rank 1 printed nothing
    m = res["metrics"]
    assert m["feature_cache"] == "computed-sharded" and m["processes"] == 2
    assert (
        "train features: computed-sharded (120 rows)" in Path(res["run_dir"], "log.txt").read_text()
    )
    sharded = list(Path(os.environ["DLPIPE_CACHE_DIR"], "features").glob("train-*.safetensors"))
    assert len(sharded) == 1  # rank 0 wrote the train cache once

    monkeypatch.setenv("DLPIPE_CACHE_DIR", str(Path.cwd() / "solo-cache"))
    one = cli("finetune", *CACHED, "--name", "one", "--json", "-q")
    assert one.exit_code == 0, one.output
    assert parse_json(one.stdout)["metrics"]["feature_cache"] == "computed"
    _assert_same_weights(_last("two"), _last("one"))
    # the cache does not depend on the number of processes: same key, same features
    solo = Path("solo-cache/features") / sharded[0].name
    assert solo.is_file()
    from dlpipe.train.classifier.features import load

    (fa, ya), (fb, yb) = load(sharded[0]), load(solo)
    assert torch.equal(ya, yb)
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-6)
    # one run folder per run, holding what a single-process run holds; nothing else written
    assert sorted(p.name for p in Path("runs/finetune").iterdir()) == ["one", "two"]
    assert _files(Path("runs/finetune/two")) == _files(Path("runs/finetune/one"))
    assert {p.name for p in Path.cwd().iterdir()} <= {"runs", ".cache", "solo-cache"}


def test_synced_batchnorm_run_then_resume_with_one_process(cli) -> None:
    _two_processes(*SLOW, "--name", "cut", "--stop-after", "1")
    ck = load_checkpoint(Path("runs/finetune/cut/checkpoints/last.safetensors"))
    assert ck.state["epoch"] == 1 and ck.state["stage"] == "unfrozen"
    first = cli("finetune", *SLOW, "--name", "first", "--stop-after", "1", "-q")
    assert first.exit_code == 0, first.output
    _assert_same_weights(_last("cut"), _last("first"))  # one epoch, 2 processes vs 1

    full = cli("finetune", *SLOW, "--name", "full", "-q")
    assert full.exit_code == 0, full.output
    resumed = cli("finetune", "--resume", "--name", "cut", "--json", "-q")  # 1 process now
    assert resumed.exit_code == 0, resumed.output
    assert parse_json(resumed.stdout)["metrics"]["epochs_run"] == 2
    _assert_same_weights(_last("cut"), _last("full"))
    rows = Path("runs/finetune/cut/metrics.csv").read_text().split()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_trains_and_resumes(cli, amp: str) -> None:
    args = ["--backbone", "mnist_cnn_bn", *DIGITS, "--no-freeze", "--amp", amp]
    part = cli("finetune", *args, "--name", amp, "--stop-after", "1", "-q")
    assert part.exit_code == 0, part.output
    scalers = load_checkpoint(Path(f"runs/finetune/{amp}/checkpoints/last.safetensors")).state[
        "scalers"
    ]
    assert ("model" in scalers) == (amp == "fp16")  # GradScaler state travels with the weights
    res = cli("finetune", "--resume", "--name", amp, "--json", "-q")
    assert res.exit_code == 0, res.output
    m = parse_json(res.stdout)["metrics"]
    assert m["amp"] == amp and m["epochs_run"] == 2
    assert all(
        map(torch.isfinite, (torch.tensor(m["last_train_loss"]), torch.tensor(m["test_loss"])))
    )
    weights = _last(amp)
    assert all(w.dtype == torch.float32 and bool(torch.isfinite(w).all())
               for w in weights.values() if w.is_floating_point())  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--optimizer", "lbfgs", "--scheduler", "none", "--amp", "bf16"], "--amp bf16"),
        (["--amp", "fp8"], "'fp8' is not one of"),
        (["--nproc", "2", "--device", "cuda:1"], "--nproc 2"),
    ],
)
def test_bad_distributed_options_exit_2(cli, extra: list[str], needle: str) -> None:
    res = cli("finetune", *CACHED, *extra)  # a later --device wins
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.stderr.split()) and "Traceback" not in res.stderr


def test_dropout_masks_are_those_of_the_global_batch() -> None:
    """Each rank's GlobalBatchDropout rows equal the rows one process's nn.Dropout produces from
    the same generator state, and the random stream advances as in one process."""
    from torch import nn

    from dlpipe.distributed import DistContext
    from dlpipe.train.classifier.loop import global_batch, global_dropout

    x = torch.randn(7, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    for shape_x in (x, torch.randn(7, 9)):
        torch.manual_seed(1)
        ref, after = nn.Dropout(0.3).train()(shape_x), torch.rand(3)
        for rank in range(2):
            ctx = DistContext(rank=rank, world_size=2)
            layer = global_dropout(nn.Sequential(nn.Dropout(0.3))).train()
            mine = shape_x[ctx.part].contiguous(memory_format=_format(shape_x))
            torch.manual_seed(1)
            with global_batch(7, ctx):
                got = layer(mine)
            assert torch.equal(got, ref[ctx.part]) and torch.equal(torch.rand(3), after)


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 else torch.contiguous_format
