"""`dlpipe predict`: the deployed path. onnxruntime + Pillow + NumPy only; never imports torch.

Preprocessing and class names come from the model's own metadata, and the images go through the
same `dlpipe.data.Preprocess` the training used, so there is nothing to re-implement or drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..data.decode import BadImage, decode, is_image_name
from ..data.preprocess import Preprocess
from ..errors import BadInput
from . import metadata
from .files import check_readable
from .providers import ALIASES, cpu_session, require_session


@dataclass
class PredictConfig:
    """Options of `dlpipe predict`."""

    model: Path  # the .onnx file written by dlpipe export
    images: list[Path]  # image files and/or folders (searched recursively)
    top_k: int = 5  # classes listed per image (1..number of classes)
    provider: str = "cpu"  # cpu, cuda, tensorrt: must really run, no silent fallback
    out: Path = Path("predictions")  # autoencoders: where reconstructions/latents are written
    batch_size: int = 32  # images per onnxruntime call


def collect_images(items: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named directly or found in folders; other files are listed as skipped."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
            found += [p for p in files if is_image_name(p)]
            skipped += [
                (str(p), "not an image file (extension)") for p in files if not is_image_name(p)
            ]
        elif item.is_file():
            found.append(item)
        else:
            raise BadInput(f"{item} does not exist.", hint="Pass image files or folders of images.")
    if not found:
        raise BadInput(
            "No images to predict on.", hint="Pass image files or folders that contain images."
        )
    return found, skipped


def _session(cfg: PredictConfig) -> Any:
    if cfg.provider.lower() in ("cpu", "cpuexecutionprovider"):
        return cpu_session(check_readable(cfg.model))
    # an unavailable provider is this machine's problem: exit 3 with advice for this install
    return require_session(
        check_readable(cfg.model), ALIASES.get(cfg.provider.lower(), cfg.provider)
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predict(cfg: PredictConfig, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the model on every image; returns {"predictions": [...], "skipped": [...], ...}."""
    session = _session(cfg)
    meta = metadata.from_session(session, cfg.model)
    kind, part = meta.get("kind"), meta.get("part", "full")
    if kind == "generator":
        raise BadInput(
            f"{cfg.model} is a generator: it turns latent vectors into images, not images into predictions.",
            hint="Sample images with `dlpipe gan sample RUN_DIR`.",
        )
    if meta["input"]["kind"] == "latent":
        raise BadInput(
            f"{cfg.model} is an autoencoder decoder: its input is a latent vector, not an image.",
            hint="Predict with the full or encoder export (dlpipe export RUN --part full).",
        )
    pre_dict = meta.get("preprocess") or {}
    pre = Preprocess.from_dict(pre_dict)
    paths, skipped = collect_images(cfg.images)
    good, outputs = [], []
    for start in range(0, len(paths), cfg.batch_size):
        chunk, batch = [], []
        for p in paths[start : start + cfg.batch_size]:
            try:
                px = pre.pixels(decode(p))
            except BadImage as exc:
                skipped.append((str(p), str(exc)))
                continue
            chunk.append(p)
            batch.append(px.astype(np.float32) if pre_dict.get("in_graph") else pre.normalize(px))
        if batch:
            out = session.run(None, {meta["input"]["name"]: np.stack(batch).astype(np.float32)})[0]
            good += chunk
            outputs.append(out)
        if progress:
            progress(len(paths[start : start + cfg.batch_size]))
    if not good:
        raise BadInput("None of the images could be decoded.", hint="See the skipped files listed.")
    result = np.concatenate(outputs)
    provider = session.get_providers()[0]
    if kind == "classifier":
        rows = _classify(good, result, meta, cfg.top_k)
    else:
        rows = _write_arrays(good, result, meta, part, cfg.out)
    return {"model": str(cfg.model), "kind": kind, "part": part, "provider": provider,
            "predictions": rows, "skipped": [{"file": f, "reason": r} for f, r in skipped]}  # fmt: skip


def _classify(
    paths: list[Path], out: np.ndarray, meta: dict[str, Any], top_k: int
) -> list[dict[str, Any]]:
    names = meta.get("class_names") or [str(i) for i in range(out.shape[-1])]
    probs = out if meta["output"]["kind"] == "probabilities" else _softmax(out.astype(np.float64))
    k = max(1, min(top_k, probs.shape[-1]))
    rows = []
    for path, p in zip(paths, probs, strict=True):
        order = np.argsort(-p)[:k]
        top = [{"class": names[i], "index": int(i), "probability": float(p[i])} for i in order]
        rows.append({"file": str(path), "top": top})
    return rows


def _write_arrays(
    paths: list[Path], out: np.ndarray, meta: dict[str, Any], part: str, folder: Path
) -> list[dict[str, Any]]:
    """Autoencoder: reconstructions as PNG (full) or latent vectors as .npy (encoder)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, y in zip(paths, out, strict=True):
        if part == "encoder":
            target = folder / f"{path.stem}.latent.npy"
            with atomic_path(target, suffix=".npy") as tmp:
                np.save(tmp, y.astype(np.float32), allow_pickle=False)
            rows.append(
                {"file": str(path), "latent": str(target), "norm": float(np.linalg.norm(y))}
            )
            continue
        img = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)  # outputs are in [0, 1]
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        target = folder / f"{path.stem}.reconstruction.png"
        with atomic_path(target, suffix=".png") as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        rows.append({"file": str(path), "reconstruction": str(target)})
    return rows
