"""`dlpipe data export` as a library function: a built-in set written as an ImageFolder of PNGs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BadInput


def export_builtin(cfg: Any, out: Any) -> dict[str, Any]:
    """Write `cfg.name` into `cfg.out_dir` (a DataExportConfig); returns {out_dir, images, classes}.

    Written into a temporary sibling and renamed at the end: an interrupted export leaves nothing."""
    import numpy as np

    from .builtin import BUILTINS
    from .sources import open_source
    from .splits import subsample

    out_dir = Path(cfg.out_dir)
    if cfg.name not in BUILTINS:
        raise BadInput(
            f"{cfg.name!r} is not a built-in data set.",
            hint=f"Choose one of: {', '.join(BUILTINS)}.",
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.force:
        raise BadInput(
            f"{out_dir} exists and is not empty.", hint="Choose a new folder or pass --force."
        )
    ds = open_source(cfg.name, cfg.data_root)
    indices = subsample(ds.labels, np.arange(len(ds)), cfg.limit, seed=0)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for cls in ds.class_names:
            (tmp / cls).mkdir()
        with out.progress(f"export {cfg.name}", total=len(indices)) as advance:
            for i in indices:
                ds.image(i).save(tmp / ds.class_names[ds.labels[i]] / f"{i:06d}.png")
                advance()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"out_dir": str(out_dir), "images": int(len(indices)), "classes": ds.class_names}
