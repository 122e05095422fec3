"""Decoded rows read with `pread` from a cache file that may still be filling: training starts at
once, whatever the cache state, and reads the same pixels a warm run reads.

Why this design. Decoding 20,000 JPEGs takes about a minute on 2 cores, so the first step cannot
wait for the whole cache. The GAN/AE gets a `PixelRows` instead of a mapped array: a cold open
creates the (uncommitted) file and starts a background thread pool that decodes the rows in
order into it, while every read first decodes, in the reading thread, any of its rows the pool
has not reached (a per-row state says which are there). A row's pixels do not depend on who
decoded it or when, so the batches, and everything computed from them, equal a warm run's; no
prediction of the epoch order is needed and no work is done twice (apart from rare races, which
write identical bytes). When every row has a state the cache is committed (`rowfile.commit`).

Rows are read with `os.preadv` into the batch's own buffer, never mapped: the process's RSS holds
a batch, not the file's pages (those stay in the OS page cache, outside RSS). Each row's CRC-32
is checked the first time a process reads it; a row that fails is decoded again.

An image that turns out undecodable keeps its position (the row space never changes size, so the
epoch order is the same cold or warm); reading it gives the nearest usable row before it (after
it for the first rows), and it is listed with the skipped files (fatal under --strict).

Under torchrun the processes of a node fill one file together: each decodes its strided share,
the states live in a file they all map, and local rank 0 commits. A process reads only the rows
it trains on (`PixelRows.batch`), decoding those the pool has not reached yet.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed import any_rank
from . import rowfile
from .arrays import Tally, _cores, check_size, decode_row
from .preprocess import Preprocess
from .rowfile import BAD, EMPTY, GOOD
from .sources import ImageDataset

_CHUNK = 64  # rows the pool decodes between checks of the stop flag


def fill_threads(processes: int = 1) -> int:
    """Decoding threads of one process's fill: its share of the cores (Pillow's decoders release
    the GIL, so threads decode in parallel and nothing has to be forked beside torch)."""
    return max(1, _cores() // max(processes, 1))


class RowStore:
    """One process's handle on a cache file, committed or filling: states, CRCs, on-demand
    decoding, positional reads. Shared by the reader and the fill thread."""

    def __init__(self, ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess, key: str,
                 shape: tuple[int, ...], fd: int, state: np.ndarray, crc: np.ndarray,
                 why: dict[int, str]) -> None:  # fmt: skip
        self.ds, self.indices, self.preprocess, self.key = ds, indices, preprocess, key
        self.shape, self.fd, self.state, self.crc, self.why = shape, fd, state, crc, why
        self.row_bytes = int(np.prod(shape[1:]))
        self.checked = np.zeros(shape[0], dtype=bool)  # CRC verified by this process
        self.lock = threading.Lock()
        self.pending: list[tuple[int, str]] = []  # bad rows found, not yet told to the data set
        self.error: BaseException | None = None  # raised by the fill thread, re-raised on read
        self.stop = threading.Event()
        self.done = threading.Event()  # set when no fill of this store is queued or running
        self.done.set()
        self.temp: tuple[Path, Path] | None = None  # files this process removes if uncommitted
        self.committed = False
        self.final = rowfile.committed_files(key)  # where it commits (fixed at creation)
        self.live_key = (str(rowfile.cache_dir()), key)

    # ---- filling ------------------------------------------------------------------------------
    def decode_into(self, p: int) -> bool:
        """Decode row `p` into the file and mark its state; True when it is unusable."""
        px, why = decode_row(self.ds, int(self.indices[p]), self.preprocess)
        if px is None:
            with self.lock:  # the fill and a reader can both decode a row: report it once
                if p not in self.why:
                    self.pending.append((int(self.indices[p]), why))
                self.why[p] = why
            self.state[p] = BAD
            return True
        check_size(self.ds, px, tuple(self.shape[1:]), int(self.indices[p]))
        buf = np.ascontiguousarray(px)
        os.pwrite(self.fd, buf, p * self.row_bytes)
        self.crc[p] = zlib.crc32(buf)
        self.state[p] = GOOD  # last: a reader that sees it finds the bytes and the CRC
        return False

    def ensure(self, positions: Any) -> None:
        """Decode, here and now, the rows among `positions` nobody has decoded yet."""
        for p in positions:
            if self.state[p] == EMPTY:
                self.decode_into(int(p))

    def fill(self, positions: np.ndarray, threads: int, commit: bool) -> None:
        """The background pass: decode `positions` in order, then (committer) commit."""
        try:
            tally = Tally(self.ds, len(positions))
            with ThreadPoolExecutor(threads, thread_name_prefix="dlpipe-fill") as pool:
                for s in range(0, len(positions), _CHUNK):
                    if self.stop.is_set():
                        return
                    todo = [int(p) for p in positions[s : s + _CHUNK] if self.state[p] == EMPTY]
                    tally.add(len(todo), sum(pool.map(self.decode_into, todo)))
            if commit:
                self.commit_when_full()
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self.error = exc

    def commit_when_full(self) -> None:
        """Wait until every row has a state (other processes fill their shares), then commit."""
        while (self.state == EMPTY).any():
            if self.stop.wait(0.05):
                return
        bad = []
        for p in np.flatnonzero(self.state == BAD).tolist():
            why = self.why.get(p) or decode_row(self.ds, int(self.indices[p]), self.preprocess)[1]
            bad.append([p, why or "could not be decoded"])
        assert self.temp is not None
        rowfile.commit(self.final, self.fd, self.temp[0], self.shape, self.crc.copy(), bad)
        self.temp[1].unlink(missing_ok=True)
        self.committed = True
        _LIVE.pop(self.live_key, None)

    def start(self, positions: np.ndarray, threads: int, commit: bool) -> None:
        """Queue `fill` behind the fills this process opened before (training rows first, then
        held-out and validation rows), on one daemon thread."""
        self.done.clear()
        _QUEUE.put((self, positions, threads, commit))
        with _WORKER_LOCK:
            if not _WORKER:
                _WORKER.append(threading.Thread(target=_fill_in_turn, name="dlpipe-fill",
                                                daemon=True))  # fmt: skip
                _WORKER[0].start()

    def close(self) -> None:
        """Stop the fill; an uncommitted file of this process is removed (never trusted later)."""
        self.stop.set()
        self.done.wait(timeout=30)
        if self.temp is not None and not self.committed:
            for p in self.temp:
                p.unlink(missing_ok=True)
        _LIVE.pop(self.live_key, None)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    # ---- reading ------------------------------------------------------------------------------
    def check(self) -> list[tuple[int, str]]:
        """Raise what the fill thread raised; return (and clear) the bad rows found so far."""
        if self.error is not None:
            raise self.error
        with self.lock:
            found, self.pending = self.pending, []
        return found

    def usable(self, p: int) -> int:
        """`p`, or the nearest usable row before it (after it when there is none)."""
        self.ensure((p,))
        if self.state[p] == GOOD:
            return p
        for q in [*range(p - 1, -1, -1), *range(p + 1, self.shape[0])]:
            self.ensure((q,))
            if self.state[q] == GOOD:
                return q
        from ..errors import BadInput

        raise BadInput(f"None of the {self.shape[0]} images of {self.ds.name} could be decoded.",
                       hint="Check the folder (the files listed in skipped.txt).")  # fmt: skip

    def read(self, positions: list[int], out: np.ndarray) -> None:
        """Rows `positions` (usable, decoded) into `out[i]`, each checked once against its CRC."""
        for i in np.argsort(positions, kind="stable"):  # ascending offsets: kinder to the disk
            p, row = positions[i], out[i]
            done = os.preadv(self.fd, [row], p * self.row_bytes)
            if done != self.row_bytes:
                raise OSError(f"short read of the decoded cache ({done} of {self.row_bytes})")
            if not self.checked[p]:
                if zlib.crc32(row) != int(self.crc[p]):
                    self.heal(p, row)
                self.checked[p] = True

    def heal(self, p: int, row: np.ndarray) -> None:
        """A row whose bytes changed on disk: decode it again (the same pixels it was made of)."""
        px, why = decode_row(self.ds, int(self.indices[p]), self.preprocess)
        if px is None:
            from ..errors import EnvironmentProblem

            raise EnvironmentProblem(
                f"Row {p} of the decoded cache is corrupt and its image cannot be decoded ({why}).",
                hint=f"Delete {rowfile.cache_dir()} and run again.",
            )
        row[...] = px


_LIVE: dict[tuple[str, str], RowStore] = {}  # fills to stop at exit, by (cache folder, key)
_QUEUE: queue.Queue = queue.Queue()
_WORKER: list[threading.Thread] = []  # started on the first fill
_WORKER_LOCK = threading.Lock()


def _fill_in_turn() -> None:
    """The process's one fill thread: fills run one after the other, in the order opened."""
    while True:
        store, positions, threads, commit = _QUEUE.get()
        try:
            if not store.stop.is_set():
                store.fill(positions, threads, commit)
        finally:
            store.done.set()


def settle(timeout: float = 600.0) -> None:
    """Wait until the fills this process started have finished (committed, or stopped by an
    error): benchmarks and tests that want the next open to be warm."""
    for store in list(_LIVE.values()):
        store.done.wait(timeout)


def _close_all() -> None:
    for store in list(_LIVE.values()):
        store.close()


atexit.register(_close_all)


def _committed(ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess, key: str,
               shape: tuple[int, ...], meta: dict[str, Any]) -> RowStore:  # fmt: skip
    """A store on a committed file: every state known, nothing to fill."""
    fd = os.open(rowfile.committed_files(key)[0], os.O_RDONLY)
    state = np.full(shape[0], GOOD, dtype=np.uint8)
    why = {int(p): str(w) for p, w in meta["bad"]}
    state[list(why)] = BAD
    store = RowStore(ds, indices, preprocess, key, shape, fd, state, meta["crc32"], why)
    store.committed = True
    ds.note_bad([(int(indices[p]), w) for p, w in why.items()])
    return store


def _fill_alone(ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess, key: str,
                shape: tuple[int, ...]) -> RowStore:  # fmt: skip
    """One process: a fresh temporary file, filled by this process's thread pool."""
    rowfile.sweep(key)
    tmp, st = rowfile.temp_files(key, os.getpid(), rowfile.new_token())
    rowfile.blank(tmp, int(np.prod(shape)))
    state, crc = rowfile.state_array(st, shape[0], create=True)
    store = RowStore(ds, indices, preprocess, key, shape, os.open(tmp, os.O_RDWR), state, crc, {})
    store.temp = (tmp, st)
    _LIVE[store.live_key] = store
    store.start(np.arange(shape[0]), fill_threads(), commit=True)
    return store


def _fill_together(ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess, key: str,
                   shape: tuple[int, ...], ctx: Any) -> RowStore:  # fmt: skip
    """The processes of each node: local rank 0 creates the files, each fills its share."""
    import torch.distributed as dist

    from ..distributed import from_main, on_every_rank

    node = int(os.environ.get("GROUP_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(ctx.world_size)))
    everyone: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(everyone, (node, ctx.local_rank, os.getpid()))
    owner = next(pid for n, lr, pid in everyone if n == node and lr == 0)
    tmp, st = rowfile.temp_files(key, owner, f"{from_main(rowfile.new_token(), ctx)}n{node}")

    def create() -> None:
        if ctx.local_rank == 0:
            rowfile.sweep(key)
            rowfile.blank(tmp, int(np.prod(shape)))
            rowfile.state_array(st, shape[0], create=True)

    on_every_rank(create, ctx)  # also the barrier: the files exist for everyone after it
    state, crc = rowfile.state_array(st, shape[0], create=False)
    store = RowStore(ds, indices, preprocess, key, shape, os.open(tmp, os.O_RDWR), state, crc, {})
    committer = ctx.local_rank == 0
    store.temp = (tmp, st) if committer else None
    store.live_key = (str(rowfile.cache_dir()), f"{key}/{ctx.rank}")
    _LIVE[store.live_key] = store
    mine = np.arange(shape[0])[ctx.local_rank :: local_world]
    store.start(mine, fill_threads(local_world), commit=committer)
    return store


def open_rows(
    ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess, ctx: Any = None
) -> PixelRows:
    """The decoded rows of `indices` (a folder, fixed output size), committed or filling in the
    background; with a multi-process `ctx`, every process calls it together. Raises
    EnvironmentProblem when the cache file cannot be created (a full disk)."""
    indices = np.asarray(indices, dtype=np.int64)
    size = int(preprocess.output_size or 0)
    shape = (len(indices), preprocess.channels, size, size)
    key = rowfile.row_key(ds, indices, preprocess)
    meta = rowfile.read_committed(key, shape)
    together = ctx is not None and ctx.enabled
    if not any_rank(meta is None, ctx):  # one process without the file: all fill it
        assert meta is not None
        return PixelRows(_committed(ds, indices, preprocess, key, shape, meta))
    if together:
        return PixelRows(_fill_together(ds, indices, preprocess, key, shape, ctx))
    return PixelRows(_fill_alone(ds, indices, preprocess, key, shape))


class PixelRows:
    """uint8 NCHW rows for the GAN/AE loops and their evaluation, read on demand (see module).
    Indexing (`rows[i]`, `rows[a:b]`, `rows[array]`) gives NumPy arrays; `batch` gives a global
    batch holding only this process's rows."""

    dtype = np.dtype(np.uint8)

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self.device: Any = "cpu"
        self.rows_read = 0  # rows this object has read from the file (per-process reads)
        self.report: Any = None  # called (rank 0) when unusable images were found late

    @property
    def shape(self) -> tuple[int, ...]:
        return self.store.shape

    @property
    def ndim(self) -> int:
        return len(self.store.shape)

    def __len__(self) -> int:
        return self.store.shape[0]

    def on(self, device: Any) -> PixelRows:
        """Batches go to `device` (the reader stays on the host)."""
        self.device = device
        return self

    def _notice(self) -> None:
        found = self.store.check()
        if found:
            self.store.ds.note_bad(found)  # fatal under --strict
            if self.report is not None:
                self.report()

    def resolve(self, positions: Any) -> np.ndarray:
        """The rows `positions` read as: each itself, or for an undecodable image the nearest
        usable row (decoding what it must to know). A classifier takes its labels from these."""
        self._notice()
        usable = np.array([self.store.usable(int(p)) for p in np.asarray(positions)], np.int64)
        self._notice()
        return usable

    def real(self, positions: Any) -> np.ndarray:
        """True where a row is its own image (not a stand-in for an undecodable one)."""
        return self.resolve(positions) == np.asarray(positions)

    def read_into(self, positions: Any, out: np.ndarray) -> None:
        """Rows `positions` into `out` (e.g. a pinned buffer's array), stand-ins resolved."""
        usable = self.resolve(positions)
        self.store.read(usable.tolist(), out)
        self.rows_read += len(usable)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        positions = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        positions = np.where(positions < 0, positions + len(self), positions).astype(np.int64)
        out = np.empty((len(positions), *self.shape[1:]), dtype=np.uint8)
        self.read_into(positions, out)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def batch(self, order: Any, part: slice | None = None) -> np.ndarray:
        """The global batch `order` as a (len(order), C, H, W) array in which only the rows
        `part` of it (this process's) are read; the other rows stay zero and are never used."""
        positions = np.asarray(order, dtype=np.int64)
        out = np.zeros((len(positions), *self.shape[1:]), dtype=np.uint8)
        mine = slice(None) if part is None else part
        self.read_into(positions[mine], out[mine])
        return out

    def wait_committed(self, timeout: float = 600.0) -> bool:
        """Block until the background fill has committed the file (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while not self.store.committed and time.monotonic() < end:
            self.store.check()
            time.sleep(0.02)
        return self.store.committed
