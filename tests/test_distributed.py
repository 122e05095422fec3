"""Distributed helpers: sharding semantics and a real 2-process Gloo reduction."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from dlpipe.distributed import DistContext, all_reduce_mean, shard


def test_shards_cover_everything_and_differ_per_epoch():
    idx = np.arange(10) * 3
    ranks = [DistContext(rank=r, world_size=3) for r in range(3)]
    parts = [shard(idx, c, seed=1, epoch=0) for c in ranks]
    assert all(len(p) == 4 for p in parts)  # padded to equal length
    assert set(np.concatenate(parts)) == set(idx)
    assert not np.array_equal(shard(idx, ranks[0], 1, 0), shard(idx, ranks[0], 1, 1))
    assert np.array_equal(shard(idx, DistContext(), 1, 0, shuffle=False), idx)


def test_single_process_is_identity():
    assert all_reduce_mean({"loss": 2.0}, DistContext()) == {"loss": 2.0}


def test_two_gloo_processes_average_metrics(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os
            from dlpipe.distributed import init_distributed, all_reduce_mean
            ctx = init_distributed("cpu")
            out = all_reduce_mean({"loss": float(ctx.rank + 1)}, ctx)
            if ctx.is_main:
                print(json.dumps({"world": ctx.world_size, "backend": ctx.backend, **out}))
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][0]
    assert '"world": 2' in line and '"backend": "gloo"' in line and '"loss": 1.5' in line
