"""Distributed helpers: global-batch rows and shares, gathers, synced BatchNorm, errors across\nranks, and the --nproc launcher, with real 2-process Gloo jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dlpipe.distributed import DistContext, shard_positions


def test_rank_rows_and_shares_cover_a_global_batch():
    """Rows rank::N of a global batch of 7 on 3 ranks: disjoint, complete, and loss shares that
    average to 1 (so DDP's mean of weighted losses is the global mean)."""
    ranks = [DistContext(rank=r, world_size=3) for r in range(3)]
    rows = [np.arange(7)[c.part] for c in ranks]
    assert sorted(np.concatenate(rows).tolist()) == list(range(7))
    assert [c.local_count(7) for c in ranks] == [len(r) for r in rows] == [3, 2, 2]
    assert sum(c.share(7) for c in ranks) / 3 == 1.0
    assert DistContext().share(7) == 1.0 and DistContext().part == slice(0, None, 1)
    # padded shards for gathers: equal length, every position present
    shards = [shard_positions(7, c) for c in ranks]
    assert {len(s) for s in shards} == {3} and set(np.concatenate(shards)) == set(range(7))


def test_two_gloo_processes_gather_rows_in_order(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import json
            import torch
            from dlpipe.distributed import (all_reduce_sum, gather_rows, init_distributed,
                                            shard_positions)
            ctx = init_distributed("cpu")
            mine = shard_positions(5, ctx)
            rows = gather_rows(torch.from_numpy(mine * 10), 5, ctx)
            total = all_reduce_sum(torch.tensor([ctx.rank + 1.0]), ctx)
            if ctx.is_main:
                print(json.dumps({"world": ctx.world_size, "backend": ctx.backend,
                                  "rows": rows.tolist(), "sum": total.item()}))
            """
        )
    )
    out = _torchrun(script)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][0])
    assert res == {"world": 2, "backend": "gloo", "rows": [0, 10, 20, 30, 40], "sum": 3.0}


def _torchrun(script, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", str(script)]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=script.parent
    )


def test_dist_batchnorm_equals_one_process_batchnorm(tmp_path):
    """BatchNorm synced over 2 Gloo ranks (CPU, where torch has no SyncBatchNorm) computes what one
    process computes on the whole batch: outputs, input and parameter gradients, running statistics.
    The global batch of 7 splits unevenly (4 + 3 rows), as a trailing batch does."""
    script = tmp_path / "bn.py"
    script.write_text(
        textwrap.dedent(
            """
            import copy, json
            import torch
            from torch import nn
            from dlpipe.distributed import init_distributed
            from dlpipe.train.accel import Accel
            from dlpipe.train.parallel import plain_batchnorm, training_view

            ctx = init_distributed("cpu")
            torch.manual_seed(0)
            net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5))
            ref = copy.deepcopy(net)
            x = torch.randn(7, 3, 6, 6) * 3 + 1
            w = torch.randn(7, 5)
            # one process, whole batch
            ref_out = ref(x)
            (ref_out * w).sum().div(7).backward()
            # two ranks: rows rank::2, loss weighted by share, DDP averages gradients
            view = training_view(net, ctx, torch.device("cpu"), Accel(torch.device("cpu")))
            part = slice(ctx.rank, None, 2)
            n_local = len(range(ctx.rank, 7, 2))
            out = view(x[part])
            ((out * w[part]).sum() / n_local * ctx.share(7)).backward()
            gap = lambda a, b: float((a - b).abs().max())
            grads = max(gap(p.grad, q.grad) for p, q in zip(net.parameters(), ref.parameters()))
            stats = max(gap(a, b) for a, b in zip(net.buffers(), ref.buffers()))
            outs = gap(out.detach(), ref_out[part].detach())
            evals = gap(plain_batchnorm(copy.deepcopy(net)).eval()(x), ref.eval()(x))
            classes = sorted({type(m).__name__ for m in net.modules()})
            if ctx.is_main:
                print(json.dumps({"out": outs, "grads": grads, "stats": stats, "eval": evals,
                                  "classes": classes,
                                  "keys": list(net.state_dict()) == list(ref.state_dict())}))
            """
        )
    )
    out = _torchrun(script)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][0])
    # float32 sums in another order: differences of a few ulps of values around 1
    assert res["out"] < 1e-5, res
    assert res["grads"] < 1e-5, res
    assert res["stats"] < 1e-5, res
    assert res["eval"] < 1e-5, res
    assert "DistBatchNorm2d" in res["classes"] and "DistBatchNorm1d" in res["classes"]
    assert res["keys"] is True


def test_nproc_reports_the_ranks_own_error_once(tmp_path):
    """`--nproc 2` runs the command under torchrun; bad input is still one paragraph (from rank 0
    alone) and dlpipe's exit code 2, not torchrun's blanket 1 with its failure report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dlpipe", "ae", "train", "--nproc", "2", "--device", "cpu",
           "--data", str(tmp_path / "missing")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("error:") == 1, out.stderr
    assert "missing" in out.stderr and "Traceback" not in out.stderr
    assert "torch.distributed" not in out.stderr and "ChildFailedError" not in out.stderr


def test_nproc_inside_torchrun_is_refused(cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("ae", "train", "--nproc", "2", "--device", "cpu")
    assert result.exit_code == 2
    assert "--nproc" in result.stderr and "torchrun" in result.stderr


def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path):
    """on_every_rank: bad input found by rank 1 alone (say a broken image in its shard) reaches
    rank 0, the rank that prints, instead of leaving rank 0 waiting in the next collective."""
    script = tmp_path / "err.py"
    script.write_text(
        textwrap.dedent(
            """
            import json
            from dlpipe.distributed import init_distributed, on_every_rank
            from dlpipe.errors import BadInput

            ctx = init_distributed("cpu")

            def work():
                if ctx.rank == 1:
                    raise BadInput("image 7 is broken", hint="fix it")
                return "fine"

            try:
                on_every_rank(work, ctx)
                outcome = "no error"
            except BadInput as exc:
                outcome = exc.paragraph()
            with open(f"outcome{ctx.rank}.json", "w") as fh:  # one file per rank: no interleaving
                json.dump({"rank": ctx.rank, "outcome": outcome}, fh)
            """
        )
    )
    out = _torchrun(script)
    assert out.returncode == 0, out.stderr[-3000:]
    got = [json.loads((tmp_path / f"outcome{r}.json").read_text())["outcome"] for r in (0, 1)]
    assert got == ["image 7 is broken fix it"] * 2


_CUT = {
    "ae": ["ae", "train", "--width", "4", "--latent", "4"],
    "finetune": ["finetune", "--backbone", "mnist_cnn_bn", "--weights", "none"],  # slow path
}


@pytest.mark.parametrize("command", ["ae", "finetune"])
def test_ctrl_c_under_nproc_stops_every_rank_and_rank_0_saves(tmp_path, command):
    """A terminal Ctrl-C reaches the `--nproc` launcher (torchrun runs in its own session); it is
    handed to the ranks once, they stop at the same step, rank 0 saves (the autoencoder: that
    step; the classifier keeps its last epoch's checkpoint), and the run continues in one
    process."""
    import signal
    import time

    from dlpipe.checkpoint import load_checkpoint

    ck = tmp_path / "runs" / command / "cut" / "checkpoints" / "last.safetensors"
    argv = [*_CUT[command], "--data", "digits", "--limit", "64", "--batch-size", "16",
            "--device", "cpu", "--quiet", "--name", "cut"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlpipe", *argv, "--epochs", "500", "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ck.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)  # the launcher only, as a terminal's Ctrl-C would be
    _, err = proc.communicate(timeout=120)
    err = " ".join(err.decode().split())
    assert proc.returncode == 130, err[-2000:]
    resume = " ".join(_CUT[command][: 2 if command == "ae" else 1])
    assert err.count(f"Continue with: dlpipe {resume} --resume --name cut") == 1, err[-2000:]
    assert "Traceback" not in err
    epoch = int(load_checkpoint(ck).state["epoch"])
    assert epoch < 500
    resumed = subprocess.run(
        [sys.executable, "-m", "dlpipe", *resume.split(), "--resume", "--name", "cut",
         "--epochs", str(epoch + 1), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert int(load_checkpoint(ck).state["epoch"]) == epoch + 1
