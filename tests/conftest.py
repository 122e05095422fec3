"""Shared fixtures: a CLI runner and small real image folders built on the fly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every test runs in its own folder with its own caches: runs/, exports/, feature caches and
    weight caches never leak between tests or into the user's home, and no hub is ever asked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLPIPE_CACHE_DIR", str(tmp_path / ".cache" / "dlpipe"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / ".cache" / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / ".cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cli():
    """Invoke the real Typer app; returns (exit_code, stdout, stderr)."""
    from dlpipe.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result

    return invoke


def parse_json(stdout: str) -> dict:
    """The single JSON object a --json command prints."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one JSON line, got: {stdout!r}"
    return json.loads(lines[0])


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A real ImageFolder: 3 classes x 6 images of distinct patterns (RGB, 16x16)."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "bird"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            arr[:, :, c] += 150
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def stripes(tmp_path: Path) -> Path:
    """40 gray 16x16 images of a bright stripe on black (mostly-black images, like MNIST, once
    drove a sigmoid output into saturation: test_ae would catch that)."""
    root = tmp_path / "stripes"
    root.mkdir()
    for i in range(40):
        img = np.zeros((16, 16), np.uint8)
        img[:, i % 12 : i % 12 + 4] = 220
        Image.fromarray(img).save(root / f"{i}.png")
    return root


@contextmanager
def lock_held_elsewhere(folder: str) -> Iterator[int]:
    """Another live process holds dlpipe's lock on `folder` (relative paths: the test's folder) for
    the block; yields its PID. It is killed after, which leaves its lock stale."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from dlpipe.locks import lock; "
         f"lock({folder!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
