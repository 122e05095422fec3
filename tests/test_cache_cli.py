"""`dlpipe cache list|clear`: a real run fills the cache, clear frees it, the next run rebuilds it
and trains the same model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tests.conftest import parse_json

TINY = ["--epochs", "1", "--width", "4", "--batch-size", "8", "--quiet", "--seed", "3"]


def _kinds(cli) -> dict[str, dict]:
    res = cli("cache", "list", "--json")
    assert res.exit_code == 0, res.output
    return {k["kind"]: k for k in parse_json(res.stdout)["kinds"]}


def _weights(run: str) -> dict[str, np.ndarray]:
    return load_file(str(Path(run) / "checkpoints" / "last.safetensors"))


def test_clear_frees_what_a_run_cached_and_the_next_run_rebuilds_it(cli, stripes):
    data = stripes
    first = cli("ae", "train", "--data", data, "--name", "a", "--json", *TINY)
    assert first.exit_code == 0, first.output
    before = _kinds(cli)
    assert before["pixels"]["entries"] >= 1 and before["pixels"]["bytes"] > 0
    assert before["index"]["entries"] >= 1

    res = cli("cache", "clear", "--kind", "pixels", "--json")
    assert res.exit_code == 0, res.output
    freed = parse_json(res.stdout)
    assert freed["bytes"] == before["pixels"]["bytes"]
    assert freed["entries"] == before["pixels"]["entries"]
    after = _kinds(cli)
    assert after["pixels"]["bytes"] == 0 and after["index"] == before["index"]  # only --kind

    second = cli("ae", "train", "--data", data, "--name", "b", "--json", *TINY)
    assert second.exit_code == 0, second.output
    assert _kinds(cli)["pixels"]["bytes"] == before["pixels"]["bytes"]  # rebuilt
    a, b = (_weights(parse_json(r.stdout)["run_dir"]) for r in (first, second))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    res = cli("cache", "clear")  # every kind runs rebuild
    assert res.exit_code == 0 and "freed" in res.stderr + res.stdout
    assert all(k["bytes"] == 0 for name, k in _kinds(cli).items() if name != "crash")


def test_clear_keeps_a_live_writers_file_removes_a_dead_ones_and_the_crash_logs(cli):
    root = Path(os.environ["DLPIPE_CACHE_DIR"])
    (root / "pixels").mkdir(parents=True)
    (root / "crash").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    live = root / "pixels" / f".k1.{os.getpid()}.tok.tmp"
    gone = root / "pixels" / f".k2.{int(dead.stdout)}.tok.tmp"
    log = root / "crash" / "crash-1.log"
    for p in (live, gone, log):
        p.write_bytes(b"x" * 100)
    assert _kinds(cli)["pixels"]["in_progress"] == 1
    res = cli("cache", "clear", "--json")
    assert res.exit_code == 0, res.output
    assert parse_json(res.stdout)["kept"] == 1
    assert live.exists() and not gone.exists() and log.exists()  # crash logs only when asked
    assert cli("cache", "clear", "--kind", "crash", "--quiet").exit_code == 0
    assert not log.exists()


def test_an_unknown_kind_is_refused_by_name(cli):
    res = cli("cache", "clear", "--kind", "pix")
    assert res.exit_code == 2
    assert "--kind 'pix'" in res.stderr and "pixels" in res.stderr
