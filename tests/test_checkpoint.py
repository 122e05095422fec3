"""Checkpoints: exact round trip, atomic under failure, never unpickled."""

from __future__ import annotations

import pickle

import pytest
import torch

from dlpipe import checkpoint as ckpt
from dlpipe.errors import BadInput
from dlpipe.runtime import rng_state, set_rng_state


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(3),
    )
    model(torch.zeros(2, 1, 6, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 1, 6, 6)).sum().backward()
        opt.step()
    return model, opt


def test_round_trip_is_exact(tmp_path):
    model, opt = _trained()
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 4,
        "rng": rng_state(),
    }
    meta = {"kind": "test", "arch": {"name": "tiny", "classes": 3}, "class_names": ["a", "b", "c"]}
    path = ckpt.save_checkpoint(
        tmp_path / "c" / "last.safetensors", {"model": model.state_dict()}, meta, state
    )
    loaded = ckpt.load_checkpoint(path)
    assert loaded.meta["arch"] == meta["arch"] and loaded.meta["class_names"] == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.weights["model"][k], v), k
    # optimizer state: int keys and tensors restored exactly; a fresh optimizer accepts it
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.state["optimizer"])
    for pid, s in opt.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][pid]["exp_avg"], s["exp_avg"])
    assert loaded.state["epoch"] == 4
    # RNG states restore to the same stream
    set_rng_state(loaded.state["rng"])
    a = torch.rand(3)
    set_rng_state(state["rng"])
    assert torch.equal(a, torch.rand(3))
    assert (tmp_path / "c" / "last.json").exists()


def test_failure_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, _ = _trained()
    path = ckpt.save_checkpoint(
        tmp_path / "last.safetensors", {"model": model.state_dict()}, {"v": 1}
    )
    before = path.read_bytes()
    import safetensors.torch

    real = safetensors.torch.save_file

    def half_then_crash(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:  # the disk filled up halfway through
            fh.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"model": model.state_dict()}, {"v": 2})
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path).meta["v"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model, _ = _trained()
    path = ckpt.save_checkpoint(tmp_path / "x.safetensors", {"model": model.state_dict()}, {})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(BadInput, match="truncated|could not be read"):
        ckpt.load_checkpoint(path)


def test_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Evil(), protocol=4))
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    for p in (bad, tmp_path / "w.pt"):
        with pytest.raises(BadInput, match="never unpickles"):
            ckpt.load_checkpoint(p)
    assert not marker.exists()


def test_plain_safetensors_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(BadInput, match="not a dlpipe checkpoint"):
        ckpt.load_checkpoint(tmp_path / "w.safetensors")


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from dlpipe.atomic import write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
