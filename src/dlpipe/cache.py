"""What dlpipe keeps in its cache folder ($DLPIPE_CACHE_DIR or ~/.cache/dlpipe), and clearing it.

Every file there but the crash logs can be rebuilt from the data and weights it came from, so
clearing costs time, never results: the next run decodes, lists or computes again. A 20,000-image folder at 192 px
holds 2.2 GB of decoded pixels; nothing evicts them on its own, so `dlpipe cache list` shows what
each kind holds and `dlpipe cache clear` frees it.

An entry is the files of one key (`KEY.rows` + `KEY.rows.json`, `frozen-KEY.onnx` + its JSON, ...).
Files being written right now are hidden temporaries (`.KEY.PID.TOKEN.tmp`): `clear` leaves those of
a live process alone and removes those whose process is gone (a killed fill). A run that has an
entry open keeps reading it after `clear` (the file system keeps an unlinked file alive while it is
open); the next run rebuilds it.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from .data.index import cache_root
from .data.rowfile import fill_pid
from .locks import pid_alive

KINDS = {
    "pixels": "decoded images of folders (gan, ae, unfrozen finetune)",
    "features": "frozen backbones' features; fd reference statistics",
    "index": "folder listings (sizes, dates, image modes)",
    "onnx": "frozen backbones exported for feature passes",
    "crash": "crash logs of commands without a run folder",
}
REBUILT = ("pixels", "features", "index", "onnx")  # what `clear` removes unless told a kind


@dataclass
class KindUsage:
    """What one kind of cache holds."""

    kind: str
    path: Path
    entries: int = 0
    bytes: int = 0
    newest: float | None = None  # the latest modification time of its files
    in_progress: list[Path] = field(default_factory=list)  # temporaries of live processes


def _entry_key(name: str) -> str:
    return name.split(".", 1)[0]


def _is_temporary(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp")


def _writer_alive(tmp: Path, mtime: float) -> bool:
    """Whether a temporary file's writer may still run: a fill's name carries its process id
    (`rowfile.fill_pid`); other temporaries (atomic writes, gone within a second) count as live
    for an hour after their last write."""
    pid = fill_pid(tmp)
    return pid_alive(pid) if pid else time.time() - mtime < 3600


def _listing(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """The files of a cache folder with their stat; a file that vanishes while it is listed (a
    fill committing: its temporary is renamed) is left out."""
    out = []
    for p in folder.iterdir() if folder.is_dir() else []:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((p, st))
    return out


def usage(kinds: list[str] | None = None) -> list[KindUsage]:
    """Entries, bytes and newest write of each kind (all kinds by default)."""
    out = []
    for kind in kinds or list(KINDS):
        u = KindUsage(kind, cache_root() / kind)
        keys = set()
        for p, st in _listing(u.path):
            u.bytes += st.st_size
            u.newest = max(u.newest or 0.0, st.st_mtime)
            if not _is_temporary(p):
                keys.add(_entry_key(p.name))
            elif _writer_alive(p, st.st_mtime):
                u.in_progress.append(p)
        u.entries = len(keys)
        out.append(u)
    return out


def clear(kinds: list[str] | None = None) -> dict[str, int]:
    """Remove every entry of `kinds` (by default those runs rebuild: not the crash logs) and the
    temporaries of dead writers; keeps files a live process is writing. Returns {"entries",
    "files", "bytes", "kept"}."""
    freed = {"entries": 0, "files": 0, "bytes": 0, "kept": 0}
    for kind in kinds or list(REBUILT):
        keys = set()
        for p, st in _listing(cache_root() / kind):
            if _is_temporary(p) and _writer_alive(p, st.st_mtime):
                freed["kept"] += 1
                continue
            p.unlink(missing_ok=True)
            freed["files"] += 1
            freed["bytes"] += st.st_size
            if not _is_temporary(p):
                keys.add(_entry_key(p.name))
        freed["entries"] += len(keys)
    return freed
