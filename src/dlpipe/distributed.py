"""torch.distributed glue: run under `torchrun` (or `--nproc N`), split batches, reduce metrics.

A training command calls `init_distributed()` first. Under torchrun (WORLD_SIZE > 1 in the
environment) it joins the process group — NCCL on GPUs, Gloo on CPU — and each rank gets its own
device; otherwise it returns a single-process context and nothing changes. Only rank 0 writes.

Batches are global: `--batch-size` is the batch of one optimisation step summed over all ranks, so a
run means the same thing on 1 or N processes and can resume on another count. Every rank draws the
same per-epoch permutation (seeded by seed and epoch) and the same random numbers for each global
batch, and takes rows `rank::world` of it (the rows torch's DistributedSampler would give it, with
no padding duplicates). Each rank's mean loss is weighted by `ctx.share(n)` so that DDP's gradient
average is the global batch's mean gradient even when the batch does not divide evenly.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

    @property
    def part(self) -> slice:
        """This rank's rows of a global batch (strided, like DistributedSampler)."""
        return slice(self.rank, None, self.world_size)

    def local_count(self, n: int) -> int:
        """How many rows of a global batch of `n` this rank gets."""
        return len(range(self.rank, n, self.world_size))

    def share(self, n: int) -> float:
        """Weight of this rank's mean loss over a global batch of `n` (1.0 in a single process):
        DDP averages gradients over ranks, so weighting by local*world/n gives the global mean."""
        return self.local_count(n) * self.world_size / n if n else 0.0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun): who may print and write."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_type: str = "cpu") -> DistContext:
    """Join the torchrun process group if there is one (idempotent)."""
    if env_world_size() <= 1:
        return DistContext()
    import torch
    import torch.distributed as dist

    # NCCL for CUDA tensors, Gloo beside it for the small CPU tensors (metrics, flags, objects)
    nccl = device_type == "cuda" and torch.cuda.is_available()
    backend = "cpu:gloo,cuda:nccl" if nccl else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if nccl:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        atexit.register(_leave)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def _leave() -> None:
    """Leave the process group before the interpreter exits: a Gloo group still alive at exit can
    abort the process ("terminate called without an active exception", SIGABRT) after its work
    is done, and torchrun then reports the run as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistContext:
    """The context of the process group this process joined (single-process when none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))


def setup(device_spec: str) -> tuple[DistContext, Any]:
    """(context, this rank's device) for a training command: joins torchrun's group if launched
    by it; under DDP on CUDA each rank takes cuda:LOCAL_RANK."""
    import torch

    from .runtime import resolve_device

    device = resolve_device(device_spec)
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return ctx, device


def all_reduce_sum(tensor: Any, ctx: DistContext) -> Any:
    """Sum a tensor over ranks in place and return it (identity in a single process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, ctx: DistContext | None, device: Any = None) -> bool:
    """Is `flag` set on any process? One all-reduce (a tensor on `device`: the GPU under NCCL);
    `flag` itself in a single process. Every process must call it together."""
    if ctx is None or not ctx.enabled:
        return flag
    import torch

    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device), ctx).item() > 0)


def from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's `value` on every rank (a small picklable object between our own processes)."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Any, ctx: DistContext) -> Any:
    """Run `fn()` on rank 0 only and give its result to every rank; an error raised there is
    raised on every rank (so none waits forever for a rank that failed)."""
    if not ctx.enabled:
        return fn()
    from .errors import DlpipeError

    outcome: tuple[str, Any] = ("", None)
    failure: BaseException | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except DlpipeError as exc:  # re-raised below, on every rank
            outcome = ("error", exc)
        except Exception as exc:  # noqa: BLE001 - rank 0 re-raises it as it was
            failure, outcome = exc, ("error", RuntimeError(f"rank 0 failed: {exc!r}"))
    kind, value = from_main(outcome, ctx)
    if failure is not None:
        raise failure
    if kind == "error":
        raise value
    return value


def all_gather_tensor(tensor: Any, ctx: DistContext) -> Any:
    """Concatenate a tensor's first dimension across ranks (same shape on every rank)."""
    if not ctx.enabled:
        return tensor
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def shard_positions(n: int, ctx: DistContext) -> np.ndarray:
    """Positions rank::world of 0..n-1, padded by wrap-around so every rank gets the same count
    (what all_gather needs); `gather_rows` puts the rows back in order."""
    import numpy as np

    per_rank = -(-n // ctx.world_size)
    return np.resize(np.arange(n), per_rank * ctx.world_size)[ctx.rank :: ctx.world_size]


def gather_rows(local: Any, n: int, ctx: DistContext, wire: Any = None) -> Any:
    """Every rank's `local` rows (for `shard_positions(n, ctx)`) gathered into the n rows in
    their original order, on every rank (a CPU tensor). `wire`: the device the gather runs on
    (the GPU under NCCL; CPU by default)."""
    import numpy as np
    import torch

    if not ctx.enabled:
        return local
    gathered = all_gather_tensor(local.to(wire or "cpu"), ctx).cpu()  # rank-major
    world = ctx.world_size
    padded = np.resize(np.arange(n), -(-n // world) * world)
    order = np.concatenate([padded[r::world] for r in range(world)])  # position of each row
    _, first = np.unique(order, return_index=True)  # one row per position 0..n-1, in order
    return gathered[torch.from_numpy(first)]


def on_every_rank(fn: Any, ctx: DistContext) -> Any:
    """Run `fn()` on every rank; if it raises a DlpipeError on any rank, every rank raises the
    first such error (rank 0 is the one that prints, whichever rank found the bad input)."""
    if not ctx.enabled:
        return fn()
    import torch.distributed as dist

    from .errors import DlpipeError

    value, error = None, None
    try:
        value = fn()
    except DlpipeError as exc:
        error = exc
    errors: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return value


def tell_launcher(paragraph: str) -> None:
    """Under torchrun, leave dlpipe's paragraph in the rank's error file (TORCHELASTIC_ERROR_FILE),
    so the failure report torchrun prints names the cause instead of "<N/A>" and a link. torchrun
    itself always prints that report and its own traceback after a failed rank; `--nproc N` (or
    `python -m dlpipe.distributed ...`, the same arguments as torchrun) shows only dlpipe's line."""
    import json
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    message = {"message": paragraph, "extraInfo": {"py_callstack": paragraph,
                                                  "timestamp": str(int(time.time()))}}  # fmt: skip
    try:
        Path(path).write_text(json.dumps({"message": message}), encoding="utf-8")
    except OSError:
        pass  # the report then says <N/A>; the paragraph was printed anyway


def launch(nproc: int, argv: list[str]) -> int:
    """Run `dlpipe ARGV` under torchrun on this node with `nproc` processes (Gloo on CPU, NCCL on
    GPUs); stdout of the ranks is passed through sys.stdout (only rank 0 prints). Returns the exit
    code of the first rank that failed (dlpipe's own code, not torchrun's blanket 1), else 0.

    torchrun runs in its own session so that a terminal Ctrl-C reaches the ranks only through us:
    they get one SIGINT, agree to stop, rank 0 saves, and they exit 130 (torchrun itself, hit by
    the same Ctrl-C, would tear the ranks down mid-save). A second Ctrl-C ends everything."""
    import signal

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "dlpipe.distributed", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "dlpipe", *argv]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert proc.stdout is not None
    interrupts = 0
    while True:
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
            return proc.wait()
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1:
                for pid in _children(proc.pid) or [proc.pid]:
                    _signal(pid, signal.SIGINT)
            else:
                _signal(-proc.pid, signal.SIGTERM)  # the whole session: torchrun and ranks


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (Linux /proc); empty where that is not available."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _signal(pid: int, sig: int) -> None:
    """os.kill (a negative pid: the process group), ignoring processes already gone."""
    try:
        os.killpg(-pid, sig) if pid < 0 else os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _torchrun(args: list[str]) -> int:
    """torchrun itself (torch.distributed.run), reporting a failed rank's own exit code quietly:
    that rank already printed its one-paragraph error."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        _rank, failure = exc.get_first_failure()
        code = int(failure.exitcode)
        return code if code > 0 else 128 - code if code < 0 else 1
    return 0


if __name__ == "__main__":
    from dlpipe.exiting import exit_now

    exit_now(_torchrun(sys.argv[1:]))  # the agent's code, without a teardown abort after it
