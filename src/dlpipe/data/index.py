"""A folder index that reads headers, not pixels: walk the tree once (sorted, deterministic), note
each image's size, mode and dimensions from its header, and cache the result keyed by each file's
(path, size, mtime) so re-opening a 100,000-file folder re-reads only what changed.

Symlinks are followed only when their target lies inside the data folder and is not an ancestor
of the link (`ln -s .. DATA/3/loop` would otherwise give every image the label "3"), and a file
reached by two paths is counted once (its own path wins over a link to it); both are listed.
Images whose header is fine but whose pixels are not are found later, when decoded (see sources).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..atomic import write_text
from .decode import MAX_PIXELS

FORMAT = "dlpipe-index/1"
_GRAY = ("1", "L", "LA", "I", "F")


def cache_root() -> Path:
    """dlpipe's cache folder: $DLPIPE_CACHE_DIR or ~/.cache/dlpipe."""
    env = os.environ.get("DLPIPE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dlpipe"


@dataclass(frozen=True)
class Candidate:
    """A file found by the walk: its path (text), real path, class folder, and whether a link
    led to it."""

    path: str
    real: str
    top: str | None  # first path component below the root (the class folder), None at the root
    via_link: bool


@dataclass(frozen=True)
class Header:
    """What a header says: ('RGB'|'L', width, height), or why the file is unusable."""

    size: int
    mtime_ns: int
    mode: str = ""
    width: int = 0
    height: int = 0
    bad: str = ""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk(root: Path) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every file below `root` in sorted order, and what was not followed (with the reason).
    os.scandir's cached entry types keep it at one directory read per folder."""
    real_root = os.path.realpath(root)
    found: list[Candidate] = []
    dropped: list[tuple[str, str]] = []

    def visit(folder: str, real_folder: str, top: str | None, linked: bool, stack: set) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=_name)
        except OSError as exc:
            dropped.append((folder, f"folder not readable ({exc.strerror})"))
            return
        for e in entries:
            here = top if top is not None else e.name
            if e.is_symlink():
                target = os.path.realpath(e.path)
                if not _inside(target, real_root):
                    dropped.append((e.path, "symlink to outside the data folder (not followed)"))
                elif os.path.isdir(target):
                    if _inside(real_folder, target) or target in stack:
                        dropped.append(
                            (e.path, "symlink to a folder above it (loop, not followed)")
                        )
                    else:
                        visit(e.path, target, here, True, stack | {target})
                elif os.path.isfile(target):
                    found.append(Candidate(e.path, target, top, True))
            elif e.is_dir(follow_symlinks=False):
                real = os.path.join(real_folder, e.name)
                visit(e.path, real, here, linked, stack | {real})
            elif e.is_file(follow_symlinks=False):
                found.append(Candidate(e.path, os.path.join(real_folder, e.name), top, linked))

    visit(os.fspath(root), real_root, None, False, {real_root})
    return found, dropped


def _name(entry: os.DirEntry) -> str:
    return entry.name


def dedupe(files: list[Candidate], root: Path) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """One entry per real file (its own path wins over a link to it, else the first in order)."""
    owner: dict[str, Candidate] = {}
    for c in files:
        kept = owner.get(c.real)
        if kept is None or (kept.via_link and not c.via_link):
            owner[c.real] = c
    start = len(os.fspath(root).rstrip(os.sep)) + 1
    keep = [c for c in files if owner[c.real] is c]
    dropped = [
        (c.path, f"same file as {owner[c.real].path[start:]} (counted once)")
        for c in files
        if owner[c.real] is not c
    ]
    return keep, dropped


def read_header(path: str) -> Header:
    """Open without decoding: size, native mode ('L' or 'RGB'), dimensions, or why not usable."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return Header(0, 0, bad=f"cannot stat ({exc.strerror})")
    if st.st_size == 0:
        return Header(st.st_size, st.st_mtime_ns, bad="zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h, mode = img.width, img.height, img.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Header(st.st_size, st.st_mtime_ns, bad=f"refused as a decompression bomb ({exc})")
    except Image.UnidentifiedImageError:
        return Header(st.st_size, st.st_mtime_ns, bad="not an image Pillow can identify")
    except PermissionError:
        return Header(st.st_size, st.st_mtime_ns, bad="permission denied")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Header(st.st_size, st.st_mtime_ns, bad=f"corrupt or truncated ({exc})")
    if w * h > MAX_PIXELS:
        why = f"{w}x{h} pixels exceeds the {MAX_PIXELS:,}-pixel limit (possible decompression bomb)"
        return Header(st.st_size, st.st_mtime_ns, bad=why + "; not decoded")
    native = "L" if mode in _GRAY or mode.startswith("I;16") else "RGB"
    return Header(st.st_size, st.st_mtime_ns, native, w, h)


def _cache_file(root: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_root() / "index" / f"{key[:24]}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        return blob["files"] if blob.get("format") == FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _key(path: Path) -> str:
    return (
        os.fsencode(path)
        .decode("utf-8", "surrogateescape")
        .encode("utf-8", "backslashreplace")
        .decode()
    )


def headers(paths: list[str], root: Path, threads: int = 8) -> tuple[list[Header], dict]:
    """Headers of `paths`, from the index cache where a file's (size, mtime) are unchanged; the
    cache is rewritten when anything was read (an unwritable cache is silently skipped)."""
    cache_path = _cache_file(root)
    cached = _load_cache(cache_path)
    out: list[Header | None] = [None] * len(paths)
    todo: list[int] = []
    for i, p in enumerate(paths):
        hit = cached.get(_key(p))
        try:
            st = os.stat(p)
        except OSError:
            todo.append(i)
            continue
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out[i] = Header(*hit)
        else:
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for i, h in zip(todo, pool.map(read_header, [paths[i] for i in todo]), strict=True):
                out[i] = h
    done = [h for h in out if h is not None]
    stats = {"files": len(paths), "read": len(todo), "cache": str(cache_path)}
    if todo or len(cached) != len(paths):
        files = {
            _key(p): [h.size, h.mtime_ns, h.mode, h.width, h.height, h.bad]
            for p, h in zip(paths, done, strict=True)
        }
        try:
            write_text(
                cache_path,
                json.dumps({"format": FORMAT, "root": _key(os.fspath(root)), "files": files}),
            )
        except OSError:
            pass  # the cache only saves time; a read-only or full cache folder is not an error
    return done, stats
