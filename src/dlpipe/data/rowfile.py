"""The files of the streamed decoded cache (see `rows`): one raw file of uint8 NCHW rows per
(data fingerprint, pixel preprocessing, native mode, the requested rows), a JSON beside it, and
while it fills a temporary data file plus a small state file shared by a node's processes.

Layout. Row p of the requested indices sits at byte p * row_bytes, in request order; a row that
could not be decoded stays zero and is listed in the JSON ("bad": [[position, reason], ...]), so
the row space never changes size (a run started cold reads the same positions as a warm one).
The JSON holds a CRC-32 of every row; a reader checks a row's CRC the first time it reads it, so
opening a committed cache costs one small JSON read, not a hash of gigabytes.

States while filling (the `.state.tmp` file, mapped shared): one byte a row (0 empty, 1 good,
2 bad; written last, after the row's bytes and its CRC), then the CRCs.

Commit: when every row has a state, the committing process fsyncs the data file, renames it to
`KEY.rows` and writes `KEY.rows.json` atomically (the commit point). A crash at any moment leaves
temporary files (removed by a later build once their process is gone) or a data file without its
JSON (removed on the next open): never a cache a later run trusts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..locks import pid_alive
from .index import cache_root
from .preprocess import Preprocess
from .sources import ImageDataset

FORMAT = "dlpipe-rows/1"
EMPTY, GOOD, BAD = 0, 1, 2
# What decides the uint8 pixels (mean/std are applied per batch: gan and ae runs share a file).
_PIXEL_FIELDS = ("resize", "crop", "interpolation", "channels", "channel_order", "layout")


def cache_dir() -> Path:
    """Where decoded pixels go: $DLPIPE_CACHE_DIR/pixels or ~/.cache/dlpipe/pixels."""
    return cache_root() / "pixels"


def pixel_key(fmt: str, ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess) -> str:
    """Everything a file of decoded pixels depends on: its format, the data fingerprint (paths,
    sizes, mtimes, labels of the index), resize/crop, the native mode and which rows."""
    rows = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    pixels = {k: v for k, v in preprocess.to_dict().items() if k in _PIXEL_FIELDS}
    blob = json.dumps([fmt, ds.fingerprint, pixels, ds.mode, rows], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def row_key(ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess) -> str:
    """The key of the streamed row file of `indices` (see pixel_key)."""
    return pixel_key(FORMAT, ds, indices, preprocess)


def committed_files(key: str) -> tuple[Path, Path]:
    """(data file, JSON) of a committed cache."""
    return cache_dir() / f"{key}.rows", cache_dir() / f"{key}.rows.json"


def temp_files(key: str, pid: int, token: str) -> tuple[Path, Path]:
    """(data, state) files of a fill; `pid` is the process that removes them (local rank 0)."""
    stem = cache_dir() / f".{key}.{pid}.{token}"
    return Path(f"{stem}.tmp"), Path(f"{stem}.state.tmp")


def new_token() -> str:
    """A name part no other fill uses."""
    return uuid.uuid4().hex[:12]


def read_committed(key: str, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The JSON of a complete committed cache of `shape` (its CRCs decoded), else None (and any
    data file without a valid JSON removed: a crash between rename and JSON)."""
    data, meta_path = committed_files(key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        crc = np.frombuffer(base64.b64decode(meta["crc32"]), dtype="<u4")
        ok = (
            meta.get("format") == FORMAT
            and list(meta["shape"]) == list(shape)
            and data.stat().st_size == int(np.prod(shape)) == int(meta["bytes"])
            and len(crc) == shape[0]
        )
        if ok:
            meta["crc32"] = crc.astype(np.uint32)
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for p in (meta_path, data):
        p.unlink(missing_ok=True)
    return None


def state_array(path: Path, rows: int, create: bool) -> tuple[np.ndarray, np.ndarray]:
    """(state per row, CRC per row) mapped shared from the state file (created zeroed)."""
    pad = -rows % 4
    size = rows + pad + 4 * rows
    if create:
        with open(path, "wb") as fh:
            fh.truncate(max(size, 1))
    raw = np.memmap(path, dtype=np.uint8, mode="r+", shape=(max(size, 1),))
    return raw[:rows], raw[rows + pad : size].view("<u4")


def blank(path: Path, nbytes: int) -> None:
    """A data file of `nbytes` with its blocks reserved: a full disk is an error now (and the
    caller falls back to decoding into memory), not a failed write in the middle of training or
    a SIGBUS when a mapped page is first written."""
    from ..errors import EnvironmentProblem

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            if nbytes and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, nbytes)
            else:
                fh.truncate(nbytes)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise EnvironmentProblem(
            f"Cannot write the decoded-pixel cache ({nbytes / 2**20:,.0f} MiB) in "
            f"{path.parent}: {exc.strerror or exc}.",
            hint="Free disk space, point DLPIPE_CACHE_DIR at a larger disk, or use a smaller "
            "--image-size.",
        ) from None


def fill_pid(tmp: Path) -> int:
    """The process id a temporary file's name carries (`.KEY.PID.TOKEN[.state].tmp`, see
    `temp_files`); 0 when it carries none."""
    parts = tmp.name.split(".")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 0


def sweep(key: str) -> None:
    """Remove temporary files of `key` left by fills or builds whose process is gone (killed
    runs); a file whose name carries no process id (a node's shared build) is removed too."""
    for tmp in cache_dir().glob(f".{key}.*.tmp"):
        pid = fill_pid(tmp)
        if pid and pid_alive(pid):  # it is filling now
            continue
        tmp.unlink(missing_ok=True)


def commit(
    final: tuple[Path, Path],
    fd: int,
    tmp: Path,
    shape: tuple[int, ...],
    crc: np.ndarray,
    bad: list[list],
) -> None:
    """fsync the filled data file, rename it to `final`'s data file, then write its JSON (the
    commit point)."""
    data, meta_path = final
    os.fsync(fd)
    meta = {
        "format": FORMAT,
        "shape": list(shape),
        "rows": int(shape[0]),
        "bytes": int(np.prod(shape)),
        "bad": sorted(bad),
        "crc32": base64.b64encode(np.asarray(crc, dtype="<u4").tobytes()).decode(),
    }
    os.replace(tmp, data)
    write_text(meta_path, json.dumps(meta))
