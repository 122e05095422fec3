"""The GPU fast path and NCCL data parallelism (marked gpu; skipped cleanly without CUDA).

On a GPU machine: `.venv/bin/pytest -m gpu`. Each run is tiny; what is checked is that the CUDA
paths (autocast bf16/fp16 with GradScaler, channels_last, torch.compile, NCCL DDP with
SyncBatchNorm) train to finite numbers and write loadable checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlpipe.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

GAN = ["gan", "train", "--data", "mnist5k", "--limit", "256", "--epochs", "1", "--batch-size",
       "32", "--fd-every", "0", "--device", "cuda"]  # fmt: skip
AE = ["ae", "train", "--data", "mnist5k", "--limit", "256", "--epochs", "1", "--batch-size", "32",
      "--noise", "gaussian:0.3", "--device", "cuda"]  # fmt: skip
FINETUNE = ["finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--no-freeze",
            "--data", "mnist5k", "--limit", "256", "--eval-limit", "64", "--epochs", "1",
            "--device", "cuda"]  # fmt: skip


def _run(argv: list[str], cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dlpipe", *argv, "--json", "--quiet"],
        capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _finite_checkpoint(result: dict) -> None:
    ck = load_checkpoint(Path(result["run_dir"]) / "checkpoints" / "last.safetensors")
    for group in ck.weights.values():
        for t in group.values():
            if t.is_floating_point():
                assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("job", [GAN, AE, FINETUNE], ids=["gan", "ae", "finetune"])
def test_amp_on_cuda(job: list[str], amp: str, tmp_path: Path) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    result = _run([*job, "--amp", amp], tmp_path)
    losses = [v for k, v in result["metrics"].items() if "loss" in k and isinstance(v, float)]
    assert losses and all(math.isfinite(v) for v in losses)
    _finite_checkpoint(result)


def test_compile_on_cuda(tmp_path: Path) -> None:
    _finite_checkpoint(_run([*AE, "--compile"], tmp_path))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("job", [GAN, FINETUNE], ids=["gan", "finetune"])
def test_two_gpus_nccl(job: list[str], tmp_path: Path) -> None:
    result = _run([*job, "--nproc", "2", "--amp", "bf16"], tmp_path)
    assert len(list((tmp_path / "runs").glob("*/*"))) == 1
    _finite_checkpoint(result)
