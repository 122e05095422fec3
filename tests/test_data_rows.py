"""The streamed decoded cache (data/rows.py): training reads rows while the cache fills, a run
started cold equals a run started warm bit for bit, a crash mid-fill leaves nothing a later run
trusts, a corrupt row is decoded again, and under torchrun each process reads only its rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlpipe.checkpoint import load_checkpoint
from dlpipe.data import Preprocess, open_source
from dlpipe.data import rows as rows_mod
from dlpipe.data.arrays import pixels_and_indices
from dlpipe.data.rowfile import cache_dir, committed_files, read_committed, row_key
from dlpipe.data.rows import RowStore, open_rows

PRE = Preprocess(resize=8, crop=8)


def _folder(root: Path, classes: int = 3, per: int = 8, size: int = 12) -> Path:
    """Class folders of gray images with distinct random pixels (seeded)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per):
            px = rng.integers(0, 255, (size, size), dtype=np.uint8)
            Image.fromarray(px).save(root / str(c) / f"{i}.png")
    return root


@pytest.fixture
def held_fill(monkeypatch):
    """The background fill waits until the test releases it: every read decodes on demand."""
    go = threading.Event()
    real = RowStore.fill

    def fill(self, positions, threads, commit):
        go.wait(60)
        real(self, positions, threads, commit)

    monkeypatch.setattr(RowStore, "fill", fill)
    yield go
    go.set()


def test_reads_decode_on_demand_while_filling_then_the_cache_commits(tmp_path, held_fill):
    ds = open_source(_folder(tmp_path / "data"))
    idx = np.arange(len(ds))[::-1].copy()
    expect, _ = pixels_and_indices(ds, idx, PRE)
    rows = open_rows(ds, idx, PRE)
    assert not rows.store.committed
    order = np.array([5, 0, 23, 11])
    assert np.array_equal(rows.batch(order), expect[order])  # the fill has not started
    assert int((rows.store.state != 0).sum()) == 4  # exactly the rows read were decoded
    assert read_committed(row_key(ds, idx, PRE), rows.shape) is None  # nothing to trust yet
    held_fill.set()
    assert rows.wait_committed(60)
    warm = open_rows(ds, idx, PRE)
    assert warm.store.committed and np.array_equal(warm[:], expect)
    names = sorted(p.name for p in cache_dir().iterdir())
    assert names == sorted(p.name for p in committed_files(rows.store.key))  # no litter


def test_a_batch_reads_only_the_rows_of_its_part(tmp_path):
    ds = open_source(_folder(tmp_path / "data"))
    rows = open_rows(ds, np.arange(len(ds)), PRE)
    expect, _ = pixels_and_indices(ds, np.arange(len(ds)), PRE)
    order = np.array([9, 3, 17, 4, 20])
    got = rows.batch(order, slice(1, None, 2))
    assert np.array_equal(got[1::2], expect[order[1::2]]) and not got[0::2].any()
    assert rows.rows_read == 2


def test_an_undecodable_image_keeps_its_place_and_reads_as_its_neighbour(tmp_path):
    root = _folder(tmp_path / "data")
    cut = root / "1" / "2.png"  # position 10: the header reads, the pixels are cut
    cut.write_bytes(cut.read_bytes()[:80])
    idx = np.arange(24)
    cold = open_rows(open_source(root), idx, PRE)
    first = cold.batch(np.array([10, 0, 9]))
    assert np.array_equal(first[0], first[2])  # row 10 reads as row 9
    assert cold.wait_committed(60)
    ds = open_source(root)
    warm = open_rows(ds, idx, PRE)
    assert warm.store.committed and np.array_equal(warm.batch(np.array([10, 0, 9])), first)
    assert len(ds.skipped) == 1 and "2.png" in ds.skipped[0][0]  # listed at open when warm


def test_a_corrupt_committed_row_is_decoded_again(tmp_path):
    ds = open_source(_folder(tmp_path / "data"))
    idx = np.arange(len(ds))
    assert open_rows(ds, idx, PRE).wait_committed(60)
    data, _ = committed_files(row_key(ds, idx, PRE))
    with open(data, "r+b") as fh:  # one flipped byte in row 3
        fh.seek(3 * 64 + 5)
        byte = fh.read(1)
        fh.seek(3 * 64 + 5)
        fh.write(bytes([byte[0] ^ 0xFF]))
    expect, _ = pixels_and_indices(ds, idx, PRE)
    assert np.array_equal(open_rows(ds, idx, PRE)[:], expect)


def test_a_crash_mid_fill_leaves_no_cache_a_later_run_trusts(tmp_path):
    root = _folder(tmp_path / "data", per=40)
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, time
            import numpy as np
            from dlpipe.data import Preprocess, open_source
            from dlpipe.data import rows
            real = rows.decode_row
            def slow(*a):
                time.sleep(0.02)
                return real(*a)
            rows.decode_row = slow
            ds = open_source({str(root)!r})
            r = rows.open_rows(ds, np.arange(len(ds)), Preprocess(resize=8, crop=8))
            r.batch(np.arange(8))
            while (r.store.state != 0).sum() < 30:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)  # mid-fill: about 30 of 120 rows written
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    ds = open_source(root)
    idx = np.arange(len(ds))
    key = row_key(ds, idx, PRE)
    assert [p for p in cache_dir().iterdir() if p.name.endswith(".tmp")]  # left by the crash
    assert read_committed(key, (len(idx), 1, 8, 8)) is None
    again = open_rows(ds, idx, PRE)
    assert not again.store.committed  # decoded afresh, not trusted
    assert again.wait_committed(60)
    expect, _ = pixels_and_indices(ds, idx, PRE)
    assert np.array_equal(open_rows(ds, idx, PRE)[:], expect)
    assert not [p for p in cache_dir().iterdir() if p.name.endswith(".tmp")]  # swept


GAN = ["gan", "train", "--image-size", "8", "--nz", "4", "--ngf", "4", "--ndf", "4",
       "--fd-every", "0", "--batch-size", "10", "--epochs", "2", "--device", "cpu", "--quiet"]  # fmt: skip
AE = ["ae", "train", "--width", "4", "--latent", "4", "--noise", "gaussian:0.3", "--image-size",
      "8", "--batch-size", "10", "--epochs", "2", "--device", "cpu", "--quiet"]  # fmt: skip

FT = ["finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--no-freeze", "--augment",
      "--image-size", "8", "--batch-size", "10", "--epochs", "2", "--device", "cpu", "--quiet"]  # fmt: skip


def _weights(command: str, name: str) -> dict[str, dict[str, torch.Tensor]]:
    path = Path("runs") / command / name / "checkpoints" / "last.safetensors"
    return load_checkpoint(path).weights


@pytest.mark.parametrize("argv", [GAN, AE, FT], ids=["gan", "ae", "finetune-unfrozen"])
def test_a_run_started_cold_equals_a_run_started_warm_bit_for_bit(cli, tmp_path, argv,
                                                                  monkeypatch):  # fmt: skip
    root = str(_folder(tmp_path / "data", per=12))
    real = RowStore.fill
    monkeypatch.setattr(RowStore, "fill", lambda *a: None)  # cold: every row decoded on demand
    assert cli(*argv, "--data", root, "--name", "cold").exit_code == 0
    assert not list(cache_dir().glob("*.rows.json"))  # nothing was committed: it ran cold
    monkeypatch.setattr(RowStore, "fill", real)
    assert cli(*argv, "--data", root, "--name", "filled").exit_code == 0
    rows_mod.settle(120)  # the fills that run started have committed
    assert list(cache_dir().glob("*.rows.json"))
    decoded = []
    monkeypatch.setattr(rows_mod, "decode_row", lambda *a: decoded.append(a) or None)
    assert cli(*argv, "--data", root, "--name", "warm").exit_code == 0
    assert decoded == []  # warm: nothing decoded, everything read from the cache
    cold, filled, warm = (_weights(argv[0], n) for n in ("cold", "filled", "warm"))
    for group, tensors in cold.items():
        for k, t in tensors.items():
            assert torch.equal(t, warm[group][k]) and torch.equal(t, filled[group][k]), k


def test_two_processes_read_only_their_rows_and_match_one(cli, tmp_path):
    """Under torchrun each process reads only its rows of each global batch (counted by the
    reader), the two together read each batch once, and the weights equal one process's."""
    root = str(_folder(tmp_path / "data", per=12))
    args = [*AE, "--data", root, "--batch-size", "11", "--epochs", "1"]
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            from dlpipe.cli import app
            from dlpipe.data.rows import PixelRows
            from dlpipe.exiting import run_and_exit
            seen = []
            real = PixelRows.batch
            def batch(self, order, part=None):
                out = real(self, order, part)
                seen.append({{"order": [int(p) for p in order], "rows_read": self.rows_read}})
                return out
            PixelRows.batch = batch
            def job():
                try:
                    app({[*args, "--name", "two"]!r}, standalone_mode=False)
                finally:
                    with open(f"reads-{{os.environ['RANK']}}.json", "w") as fh:
                        json.dump(seen, fh)
            run_and_exit(job)  # as `python -m dlpipe` leaves a torchrun rank: no C++ teardown
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(script)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reads = [json.loads(Path(f"reads-{r}.json").read_text()) for r in (0, 1)]
    assert [b["order"] for b in reads[0]] == [b["order"] for b in reads[1]]  # the same batches
    for rank, calls in enumerate(reads):
        counts = np.diff([0] + [b["rows_read"] for b in calls])
        assert counts.tolist() == [len(b["order"][rank::2]) for b in calls]  # its rows only
    assert cli(*args, "--name", "one").exit_code == 0
    two, one = _weights("ae", "two"), _weights("ae", "one")
    worst = max((t - one[g][k]).abs().max().item() for g, ts in two.items() for k, t in ts.items())
    assert worst <= 1e-5


def test_an_unfrozen_finetune_trains_on_the_streamed_cache_and_never_counts_a_bad_image(
    cli, tmp_path
):
    """The classifier reads a folder's rows from the streamed cache like gan/ae: an image whose
    pixels are cut (here a held-out one) is listed in skipped.txt and left out of the held-out
    score and the confusion matrix; in training it would read as its neighbour, with the
    neighbour's label (`Source.targets`)."""
    from dlpipe.data import make_split

    root = _folder(tmp_path / "data", per=12)
    ds = open_source(root)
    split = make_split(ds.labels, 0.25, 0.25, 0, ds.official_test)
    cut = Path(ds.where(int(split.test[3])))
    cut.write_bytes(cut.read_bytes()[:80])
    args = [*FT, "--data", str(root), "--name", "cut", "--val-fraction", "0.25",
            "--test-fraction", "0.25", "--epochs", "1"]  # fmt: skip
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert cut.name in (Path("runs") / "finetune" / "cut" / "skipped.txt").read_text()
    metrics = json.loads((Path("runs") / "finetune" / "cut" / "metrics.json").read_text())
    assert metrics["held_out_split"] == "test"
    assert metrics["held_out_size"] == len(split.test) - 1
    assert sum(map(sum, metrics["confusion"])) == len(split.test) - 1


def test_a_stand_in_row_takes_its_neighbours_label(tmp_path):
    """Training reads an undecodable image as the usable row before it: the label must come
    from that row too, or the classifier would learn a wrong class."""
    from dlpipe.train.classifier.loop import Source

    root = _folder(tmp_path / "data", per=4)
    first_of_class_1 = root / "1" / "0.png"  # position 4: its stand-in is row 3, of class 0
    first_of_class_1.write_bytes(first_of_class_1.read_bytes()[:80])
    ds = open_source(root)
    idx = np.arange(len(ds))
    src = Source(torch.from_numpy(ds.labels[idx].copy()), pixels=open_rows(ds, idx, PRE),
                 preprocess=PRE)  # fmt: skip
    pos = np.array([4, 5, 3])
    assert src.targets(pos).tolist() == [0, 1, 0]
    assert torch.equal(src.batch(pos)[0], src.batch(pos)[2])
    assert src.real(pos).tolist() == [False, True, True]


def test_a_bad_row_decoded_by_the_fill_and_a_reader_is_reported_once(tmp_path, held_fill):
    """The fill thread and a batch can decode the same row at once; a bad one is listed once."""
    root = _folder(tmp_path / "data")
    cut = root / "0" / "3.png"
    cut.write_bytes(cut.read_bytes()[:80])
    ds = open_source(root)
    rows = open_rows(ds, np.arange(len(ds)), PRE)
    assert rows.store.decode_into(3) and rows.store.decode_into(3)  # both found it unusable
    rows[np.array([3, 2])]  # the read tells the data set what was found
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("3.png")
