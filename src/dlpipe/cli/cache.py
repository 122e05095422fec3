"""`dlpipe cache list|clear`: what dlpipe keeps in its cache folder, and freeing it."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonOpt, Output, QuietOpt, command

app = typer.Typer(
    help="dlpipe's cache folder ($DLPIPE_CACHE_DIR or ~/.cache/dlpipe): decoded pixels, features, "
    "folder listings, rebuilt on demand; nothing evicts them on its own.",
    no_args_is_help=True,
)

KindOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--kind",
        help="Only this kind (repeat for several): pixels, features, index, onnx, crash.",
    ),
]


def _kinds(kind: list[str] | None) -> list[str] | None:
    from ..cache import KINDS
    from ..errors import BadInput

    unknown = [k for k in kind or [] if k not in KINDS]
    if unknown:
        raise BadInput(
            f"--kind {unknown[0]!r} is not a cache kind.", hint=f"Use one of: {', '.join(KINDS)}."
        )
    return kind or None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


@app.command("list")
@command
def list_(kind: KindOpt = None, json: JsonOpt = False) -> None:
    """Show each kind of cached file: entries, size on disk, last written, and what it is for."""
    import time

    from rich.table import Table

    from ..cache import KINDS, usage
    from ..data.index import cache_root

    out = Output(json)
    rows = usage(_kinds(kind))
    table = Table(title=f"dlpipe cache: {cache_root()}")
    for col in ("kind", "entries", "size", "last written", "holds"):
        table.add_column(col)
    for u in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(u.newest)) if u.newest else "-"
        busy = f" ({len(u.in_progress)} being written)" if u.in_progress else ""
        table.add_row(u.kind, f"{u.entries}{busy}", _size(u.bytes), when, KINDS[u.kind])
    table.caption = f"total {_size(sum(u.bytes for u in rows))}; free it with `dlpipe cache clear`"
    out.print(table)
    out.result({"cache_dir": str(cache_root()), "kinds": [
        {"kind": u.kind, "path": str(u.path), "entries": u.entries, "bytes": u.bytes,
         "newest": u.newest, "in_progress": len(u.in_progress)} for u in rows]})  # fmt: skip


@app.command("clear")
@command
def clear_(kind: KindOpt = None, json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Delete cached files: every kind runs rebuild (pixels, features, index, onnx), or only
    --kind ... (crash logs go only with --kind crash). Clearing costs time, never results. Files a
    running dlpipe process is writing are kept; a run reading an entry keeps reading it."""
    from ..cache import clear

    out = Output(json, quiet)
    freed = clear(_kinds(kind))
    kept = f"; kept {freed['kept']} file(s) being written now" if freed["kept"] else ""
    out.result(
        freed,
        f"freed {_size(freed['bytes'])}: {freed['entries']} entries, {freed['files']} files{kept}",
    )
