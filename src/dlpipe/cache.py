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
import time
from dataclasses import dataclass, field
from pathlib import Path

from .data.index import cache_root

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


def _writer_alive(tmp: Path) -> bool:
    """Whether a temporary file's writer may still run: `.KEY.PID.TOKEN[.state].tmp` names its
    process; other temporaries (atomic writes: no PID, gone within a second) count as live."""
    parts = tmp.name.split(".")
    if len(parts) < 4 or not parts[2].isdigit():
        return time.time() - tmp.stat().st_mtime < 3600
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def usage(kinds: list[str] | None = None) -> list[KindUsage]:
    """Entries, bytes and newest write of each kind (all kinds by default)."""
    out = []
    for kind in kinds or list(KINDS):
        folder = cache_root() / kind
        u = KindUsage(kind, folder)
        files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        keys = set()
        for p in files:
            st = p.stat()
            u.bytes += st.st_size
            u.newest = max(u.newest or 0.0, st.st_mtime)
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                if _writer_alive(p):
                    u.in_progress.append(p)
            else:
                keys.add(_entry_key(p.name))
        u.entries = len(keys)
        out.append(u)
    return out


def clear(kinds: list[str] | None = None) -> dict[str, int]:
    """Remove every entry of `kinds` (by default those runs rebuild: not the crash logs) and the
    temporaries of dead writers; keeps files a live process is writing. Returns {"entries",
    "files", "bytes", "kept"}."""
    freed = {"entries": 0, "files": 0, "bytes": 0, "kept": 0}
    for u in usage(kinds or list(REBUILT)):
        if not u.path.is_dir():
            continue
        keys = set()
        for p in list(u.path.iterdir()):
            if not p.is_file() or p in u.in_progress:
                freed["kept"] += p in u.in_progress
                continue
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            freed["files"] += 1
            freed["bytes"] += size
            if not p.name.startswith("."):
                keys.add(_entry_key(p.name))
        freed["entries"] += len(keys)
    return freed
