"""torch.distributed glue: run under `torchrun` (or `--nproc N`), shard data, reduce metrics.

A training command calls `init_distributed()` first. Under torchrun (WORLD_SIZE > 1 in the
environment) it joins the process group — NCCL on GPUs, Gloo on CPU — and each rank gets its own
device; otherwise it returns a single-process context and nothing changes. Only rank 0 writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str = "cpu") -> DistContext:
    """Join the torchrun process group if there is one (idempotent)."""
    if env_world_size() <= 1:
        return DistContext()
    import torch
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def shard(
    indices: np.ndarray, ctx: DistContext, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
    """This rank's part of `indices` for an epoch (DistributedSampler semantics: same permutation
    on every rank seeded by seed+epoch, padded by wrap-around so every rank gets the same count)."""
    order = (
        np.random.default_rng([seed, epoch]).permutation(len(indices))
        if shuffle
        else np.arange(len(indices))
    )
    per_rank = -(-len(order) // ctx.world_size)
    padded = np.resize(order, per_rank * ctx.world_size)
    return indices[padded[ctx.rank :: ctx.world_size]]


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average scalar metrics across ranks (identity in a single process)."""
    if not ctx.enabled or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def all_gather_tensor(tensor: Any, ctx: DistContext) -> Any:
    """Concatenate a tensor's first dimension across ranks (same shape on every rank)."""
    if not ctx.enabled:
        return tensor
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run `dlpipe ARGV` under torchrun on this node with `nproc` processes; returns its exit code."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "dlpipe",
        *argv,
    ]
    return subprocess.call(cmd)
