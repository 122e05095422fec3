"""Validation inputs: real held-out images through the stored preprocessing, random ones, latents.

Real inputs take the deployed path: the checkpoint's data source is reopened, its held-out split
recomputed, and each image goes through `Preprocess` read from the ONNX metadata, the same code
`dlpipe predict` runs. Generators get fixed latent vectors; an autoencoder's decoder gets the
latents its encoder produces from real images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import Preprocess, Split, make_split, open_source
from ..data.splits import spread
from ..errors import BadInput


@dataclass
class InputSet:
    """One named set of model inputs (float32), with labels when the data is labeled."""

    name: str  # "real" | "random" | "latent"
    x: np.ndarray
    labels: np.ndarray | None = None
    note: str = ""


def model_split(ds: Any, data: dict[str, Any]) -> Split:
    """The train/val/test split a checkpoint's data description recorded, recomputed on `ds`."""
    return make_split(
        ds.labels,
        float(data.get("val_fraction", 0.1)),
        float(data.get("test_fraction", 0.1)),
        int(data.get("seed", 0)),
        ds.official_test,
    )


def per_class_note(labels: np.ndarray, class_names: list[str]) -> str:
    """'6-7 per class (0: 7, 1: 7, ...)': how a sample covers the classes (unlabeled: '')."""
    if not class_names or len(labels) == 0 or np.any(labels < 0):
        return ""
    counts = np.bincount(labels, minlength=len(class_names))
    span = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    text = f"stratified by class: {span} per class"
    if len(class_names) <= 20:
        text += (
            " (" + ", ".join(f"{n}: {c}" for n, c in zip(class_names, counts, strict=True)) + ")"
        )
    return text


def held_out(meta: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 NCHW pixels and labels of up to n held-out images of the checkpoint's data, picked
    stratified by class (spread over the split when unlabeled): never just the first n, which on a
    class-sorted set are all one class. Images that no longer decode are left out."""
    from ..data.arrays import pixels_and_indices

    data = meta.get("data") or {}
    if not data.get("source"):
        raise BadInput(
            "The model's metadata does not name its training data, so real inputs cannot be built.",
            hint="Use --inputs random, or re-export from a checkpoint written by dlpipe training.",
        )
    ds = open_source(data["source"], data.get("data_root"))
    split = model_split(ds, data)
    name, pool = next(
        ((k, s) for k, s in (("test", split.test), ("val", split.val)) if len(s)),
        ("whole", np.arange(len(ds))),
    )
    idx = pool[spread(ds.labels[pool], max(1, n))]
    how = per_class_note(ds.labels[idx], ds.class_names) or "spread over the split"
    note = f"{len(idx)} of the {len(pool)} images in the {name} split of {ds.name}, {how}"
    if data.get("fingerprint") and data["fingerprint"] != ds.fingerprint:
        note += f" (WARNING: data fingerprint {ds.fingerprint} != training's {data['fingerprint']})"
    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    px, kept = pixels_and_indices(ds, idx, pre)  # undecodable images are left out
    return px, ds.labels[kept], note


def model_input(meta: dict[str, Any], pixels: np.ndarray) -> np.ndarray:
    """uint8 NCHW pixels -> the float32 input the model takes (normalized unless in the graph)."""
    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    if (meta.get("preprocess") or {}).get("in_graph"):
        return pixels.astype(np.float32)
    return pre.normalize(pixels).astype(np.float32)


def build_inputs(
    meta: dict[str, Any],
    shape: tuple[int, ...],
    which: str,
    n: int,
    seed: int = 0,
    encode: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[InputSet]:
    """The input sets `validate` compares on; `which` is real, random or both."""
    if which not in ("real", "random", "both"):
        raise BadInput(f"--inputs {which!r} is unknown.", hint="Use real, random or both.")
    rng = np.random.default_rng(seed)
    kind = meta["input"]["kind"]
    sets: list[InputSet] = []
    if kind == "latent" and meta.get("kind") == "generator":
        z = rng.standard_normal((n, *shape)).astype(np.float32)
        return [InputSet("latent", z, note=f"{n} fixed latent vectors N(0,1), seed {seed}")]
    if which in ("real", "both"):
        if kind == "latent":  # autoencoder decoder: latents of real images from the encoder
            if encode is None:
                raise BadInput("A decoder needs its encoder to build real latents.")
            full_meta = {**meta, "input": {"kind": "image"}}
            pixels, labels, note = held_out(full_meta, n)
            sets.append(
                InputSet("real", encode(model_input(meta, pixels)), labels, "encoded " + note)
            )
        else:
            pixels, labels, note = held_out(meta, n)
            sets.append(InputSet("real", model_input(meta, pixels), labels, note))
    if which in ("random", "both"):
        if kind == "latent":
            x = rng.standard_normal((n, *shape)).astype(np.float32)
            sets.append(InputSet("random", x, note=f"{n} N(0,1) latent vectors, seed {seed}"))
        else:
            pixels = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            sets.append(
                InputSet("random", model_input(meta, pixels), note=f"{n} uniform random images")
            )
    return sets
