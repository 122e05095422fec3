"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A crash (or an exception) at any point leaves either the previous file or the new one, never a
half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .text import printable


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, target)
    except OSError as exc:
        if is_disk_full(exc) and exc.filename != str(target):  # say which file did not fit
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error means the disk (or quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def as_os_error(exc: Exception, path: str | os.PathLike[str]) -> Exception:
    """A library's own "No space left on device" error (safetensors, PIL, onnx write through Rust
    or C and raise their own types) as the OSError it is, naming `path`; other errors unchanged."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    if "No space left" in text or "StorageFull" in text or "os error 28" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if "Disk quota" in text or "os error 122" in text:
        return OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))
    return exc


def free_space(path: str | os.PathLike[str]) -> str:
    """Free space on the file system of `path` (or its nearest existing parent), for messages."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.1f} MiB"


_warned: set[str] = set()


def optional_write(write: Callable[[], object], path: str | os.PathLike[str], what: str) -> bool:
    """Write a cache file that the run can do without: a full, read-only or missing cache folder
    is one warning (once per folder) and the run goes on without it. True when it was written."""
    try:
        write()
        return True
    except Exception as exc:  # noqa: BLE001 - any failure of an optional cache is only a warning
        exc = as_os_error(exc, path)
        folder = str(Path(path).parent)
        if folder not in _warned:
            _warned.add(folder)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            _warn(
                f"cannot write the {what} in {folder} ({reason}); running without it. Set "
                "DLPIPE_CACHE_DIR to a writable folder to keep it."
            )
        return False


def _warn(message: str) -> None:
    from rich.markup import escape

    from .console import console
    from .distributed import env_rank

    console(stderr=True, quiet=env_rank() != 0).print(
        f"[yellow]warning:[/] {escape(message)}", soft_wrap=True
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write bytes to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text to `target`; a file name in it that is not UTF-8 is written as
    shown on screen (`caf\\xe9.png`), never a UnicodeEncodeError after the work is done."""
    return write_bytes(target, printable(text).encode("utf-8"))
