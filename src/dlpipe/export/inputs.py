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

from ..data import Preprocess, make_split, open_source
from ..errors import BadInput


@dataclass
class InputSet:
    """One named set of model inputs (float32), with labels when the data is labeled."""

    name: str  # "real" | "random" | "latent"
    x: np.ndarray
    labels: np.ndarray | None = None
    note: str = ""


def held_out(meta: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 NCHW pixels and labels of up to n held-out images of the checkpoint's data."""
    from ..data.arrays import pixels_and_indices

    data = meta.get("data") or {}
    if not data.get("source"):
        raise BadInput(
            "The model's metadata does not name its training data, so real inputs cannot be built.",
            hint="Use --inputs random, or re-export from a checkpoint written by dlpipe training.",
        )
    ds = open_source(data["source"], data.get("data_root"))
    split = make_split(
        ds.labels,
        float(data.get("val_fraction", 0.1)),
        float(data.get("test_fraction", 0.1)),
        int(data.get("seed", 0)),
        ds.official_test,
    )
    pool = next((s for s in (split.test, split.val, np.arange(len(ds))) if len(s)), split.train)
    idx = pool[: max(1, n)]
    note = f"{len(idx)} held-out images of {ds.name}"
    if data.get("fingerprint") and data["fingerprint"] != ds.fingerprint:
        note += f" (WARNING: data fingerprint {ds.fingerprint} != training's {data['fingerprint']})"
    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    px, kept = pixels_and_indices(ds, idx, pre)  # undecodable images are left out
    return px, ds.labels[kept], note


def _from_pixels(meta: dict[str, Any], pixels: np.ndarray) -> np.ndarray:
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
                InputSet("real", encode(_from_pixels(meta, pixels)), labels, "encoded " + note)
            )
        else:
            pixels, labels, note = held_out(meta, n)
            sets.append(InputSet("real", _from_pixels(meta, pixels), labels, note))
    if which in ("random", "both"):
        if kind == "latent":
            x = rng.standard_normal((n, *shape)).astype(np.float32)
            sets.append(InputSet("random", x, note=f"{n} N(0,1) latent vectors, seed {seed}"))
        else:
            pixels = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            sets.append(
                InputSet("random", _from_pixels(meta, pixels), note=f"{n} uniform random images")
            )
    return sets
