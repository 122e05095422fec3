"""The data layer: sources (folders and built-in offline sets), decoding, splits, preprocessing.

The names below load on first use (PEP 562), so that importing one light submodule, such as
`data.builtin` for the set names in `--help`, does not pull in Pillow and the decoders.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Preprocess": "preprocess",
    "ImageDataset": "sources",
    "open_source": "sources",
    "Split": "splits",
    "make_split": "splits",
}
__all__ = ["ImageDataset", "Preprocess", "Split", "make_split", "open_source"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
