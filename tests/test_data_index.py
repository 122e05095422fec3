"""The folder index (headers only, cached by path/size/mtime), symlink safety, files that vanish or
change during a run, and what the decoded-pixel cache is keyed by (its reads: test_data_rows)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlpipe.data import Preprocess, open_source
from dlpipe.data.arrays import pixels_and_indices
from dlpipe.data.index import headers
from dlpipe.data.rowfile import row_key
from dlpipe.errors import BadInput


def _digits(root: Path, classes: int = 3, per: int = 4, size: int = 12) -> Path:
    """class folders 0..classes-1, each image filled with 40*class + its number."""
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per):
            Image.new("L", (size, size), 40 * c + i).save(root / str(c) / f"{i}.png")
    return root


def _files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


def test_index_cache_notices_changed_added_and_removed_files(tmp_path):
    root = _digits(tmp_path / "data")
    paths = _files_of(root)
    _, cold = headers(paths, root)
    _, warm = headers(paths, root)
    assert cold["read"] == len(paths) and warm["read"] == 0  # warm: no header is read again
    first = open_source(root)

    changed = root / "1" / "2.png"
    Image.new("L", (12, 12), 200).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, surely
    added = root / "2" / "9.png"
    Image.new("L", (12, 12), 7).save(added)
    (root / "0" / "3.png").unlink()
    paths = _files_of(root)
    heads, stats = headers(paths, root)
    assert stats["read"] == 2  # the changed and the added file, nothing else
    assert heads[paths.index(changed)].mode == "L"
    again = open_source(root)
    assert len(again) == len(first) and again.fingerprint != first.fingerprint
    assert sum(p.name == "9.png" for p in again.paths) == 1
    assert not any(p == root / "0" / "3.png" for p in again.paths)


def test_symlink_loop_to_the_root_does_not_relabel_other_classes(tmp_path):
    """`ln -s .. DATA/3/loop` used to label every other class's images "3"."""
    root = _digits(tmp_path / "data", classes=4)
    os.symlink("..", root / "3" / "loop")
    ds = open_source(root)
    assert len(ds) == 16 and np.bincount(ds.labels).tolist() == [4, 4, 4, 4]
    for i, p in enumerate(ds.paths):
        assert ds.labels[i] == int(p.relative_to(root).parts[0])
    assert any("loop" in f and "not followed" in why for f, why in ds.skipped)


def test_class_folder_linked_to_another_class_is_refused_not_mislabelled(tmp_path):
    root = _digits(tmp_path / "data", classes=2)
    os.symlink(root / "0", root / "2")
    with pytest.raises(BadInput, match="same files as in another class") as err:
        open_source(root)
    assert str(root / "2") in err.value.paragraph()


def test_a_file_reached_twice_is_counted_once(tmp_path):
    root = _digits(tmp_path / "data", classes=2)
    os.symlink(root / "0" / "1.png", root / "1" / "again.png")  # same image, other class
    ds = open_source(root)
    assert len(ds) == 8 and np.bincount(ds.labels).tolist() == [4, 4]
    assert [why for f, why in ds.skipped if f.endswith("again.png")] == [
        "same file as 0/1.png (counted once)"
    ]


def test_symlink_out_of_the_data_folder_is_not_followed(tmp_path):
    root = _digits(tmp_path / "data", classes=2)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("L", (12, 12), 1).save(outside / "x.png")
    os.symlink(outside / "x.png", root / "1" / "x.png")
    ds = open_source(root)
    assert len(ds) == 8
    assert any("outside the data folder" in why for _, why in ds.skipped)


def test_files_that_vanish_or_change_during_a_run_are_skipped_and_listed(tmp_path):
    root = _digits(tmp_path / "data", classes=2, per=6)
    ds = open_source(root)
    (root / "0" / "1.png").unlink()
    changed = root / "1" / "2.png"
    changed.write_bytes(b"garbage now")
    px, kept = pixels_and_indices(ds, np.arange(len(ds)), Preprocess(resize=8, crop=8))
    assert len(px) == len(kept) == 10
    reasons = {Path(f).name: why for f, why in ds.skipped}
    assert reasons == {
        "1.png": "vanished since the data set was opened",
        "2.png": "changed since the data set was opened",
    }


def test_a_mostly_garbage_set_fails_early_with_a_clear_error(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    png = root / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(png)
    data = png.read_bytes()
    png.unlink()
    for i in range(40):  # headers read fine, pixels are cut
        (root / f"{i:02d}.png").write_bytes(data[: len(data) // 2])
    Image.new("L", (32, 32), 3).save(root / "zz.png")
    ds = open_source(root)
    with pytest.raises(BadInput, match="looks mostly unusable"):
        pixels_and_indices(ds, np.arange(len(ds)), Preprocess(resize=8, crop=8))


def test_an_unwritable_cache_folder_warns_and_decodes_into_memory(tmp_path, monkeypatch):
    from dlpipe.data.pixels import open_pixels

    root = _digits(tmp_path / "data", classes=2)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("DLPIPE_CACHE_DIR", str(blocker))  # mkdir below it fails
    ds = open_source(root)
    said: list[str] = []
    px, kept = open_pixels(ds, np.arange(len(ds)), Preprocess(resize=8, crop=8), lambda n: None,
                           warn=said.append)  # fmt: skip
    assert isinstance(px, np.ndarray) and len(px) == len(kept) == 8
    assert said and "not writable" in said[0] and "into memory" in said[0]


def test_normalisation_does_not_split_the_decoded_cache(tmp_path):
    """mean/std are applied per batch: runs that differ only there (gan vs ae) share one file."""
    root = _digits(tmp_path / "data", classes=2)
    ds = open_source(root)
    idx = np.arange(8)
    a = Preprocess(resize=8, crop=8, mean=[0.0], std=[1.0])
    b = Preprocess(resize=8, crop=8, mean=[0.5], std=[0.5])
    assert row_key(ds, idx, a) == row_key(ds, idx, b)
    assert row_key(ds, idx, a) != row_key(ds, idx, Preprocess(resize=9, crop=8))
