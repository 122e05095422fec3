"""Advisory locks on run folders and pipeline state: one writer at a time, stale locks taken over.

A lock is a file `FOLDER/.lock` holding the owner's PID, host and command line, locked with
`flock` while the owner runs. The kernel drops a flock when its process dies (SIGKILL, OOM, power
loss of the process), so a lock file left behind by a dead owner is stale by construction: the next
run takes it over. Where flock is unavailable (some network file systems, Windows) the PID in the
file decides: a live process other than this one holds the folder.

The CLI's error boundary releases the locks a command took (`mark` / `release_since`); an atexit
hook releases the rest (library calls). A lock taken twice by one process is counted, not refused.
"""

from __future__ import annotations

import atexit
import errno
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

LOCK_NAME = ".lock"


@dataclass
class _Held:
    folder: Path
    kind: str
    fd: int | None  # None: a nested take of a folder this process already holds


_held: list[_Held] = []


def mark() -> int:
    """A position in the stack of held locks; `release_since(mark)` drops those taken after it."""
    return len(_held)


def release_since(position: int) -> None:
    """Release the locks taken after `position` (newest first)."""
    while len(_held) > position:
        _release(_held.pop())


def current_run(since: int = 0) -> Path | None:
    """The run folder this process most recently locked after mark `since` (where a crash log
    belongs), if any."""
    return next((h.folder for h in reversed(_held[since:]) if h.kind == "run"), None)


def holds(folder: str | os.PathLike[str]) -> bool:
    """Whether this process holds the lock of `folder`."""
    key = _key(Path(folder))
    return any(_key(h.folder) == key for h in _held)


def lock(folder: str | os.PathLike[str], kind: str = "run", what: str = "Run folder") -> Path:
    """Take the lock of `folder` (created if needed) or raise BadInput naming the live owner."""
    folder = Path(folder)
    if holds(folder):
        _held.append(_Held(folder, kind, None))
        return folder / LOCK_NAME
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    for _ in range(20):  # the owner may unlink the file between our open and our flock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            owner = _try_flock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if owner is not None:
            os.close(fd)
            raise BadInput(
                f"{what} {folder} is in use by process {owner} ({_describe(path)}); two runs "
                "writing one folder would interleave their metrics and checkpoints.",
                hint="Wait for that process to finish, or use another --name. If no such process "
                f"is running, the lock is stale: delete {path}.",
            )
        if _same_file(fd, path):
            _write_owner(fd)
            _held.append(_Held(folder, kind, fd))
            return path
        os.close(fd)  # unlinked by its previous owner meanwhile: lock the new file instead
    raise BadInput(f"Could not lock {path}: it keeps changing.", hint="Try again.")


def _try_flock(fd: int, path: Path) -> int | None:
    """None when we now hold the lock; else the PID of the live owner."""
    try:
        import fcntl
    except ImportError:  # Windows: the PID decides
        return _live_owner(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_pid(path) or -1
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no flock here
            return _live_owner(path)
        raise


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # gone
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _live_owner(path: Path) -> int | None:
    pid = _read_pid(path)
    if not pid or pid == os.getpid():
        return None
    return pid if pid_alive(pid) else None  # None: stale, its owner is gone


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
        return int(first.strip())
    except (OSError, ValueError):
        return None


def _describe(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "lock file unreadable"
    return " ".join(lines[1:3])[:200] or "no details"


def _write_owner(fd: int) -> None:
    text = f"{os.getpid()}\nhost {socket.gethostname()}\ncommand {' '.join(sys.argv)[:300]}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8", "replace"), 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _release(held: _Held) -> None:
    if held.fd is None:
        return
    path = held.folder / LOCK_NAME
    try:
        if _same_file(held.fd, path):
            path.unlink()  # before unlocking: a waiter then re-opens and locks a fresh file
    except OSError:
        pass
    try:
        os.close(held.fd)  # drops the flock
    except OSError:
        pass


@atexit.register
def _release_all() -> None:
    release_since(0)
