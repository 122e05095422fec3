"""`dlpipe predict`: the deployed path. onnxruntime + Pillow + NumPy only; never imports torch.

Preprocessing and class names come from the model's own metadata, and the images go through the
same `dlpipe.data.Preprocess` the training used, so there is nothing to re-implement or drift.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text
from ..console import Reporter, quiet
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
    batch_size: int = 32  # images per onnxruntime call; 8-256 is sensible (memory grows with it)
    save_csv: Path | None = None  # one row per input file: path, top-k classes and probabilities


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


def open_session(model: Path, provider: str = "cpu") -> Any:
    """An onnxruntime session on exactly `provider` (no silent fallback), or a clear error."""
    if provider.lower() in ("cpu", "cpuexecutionprovider"):
        return cpu_session(check_readable(model))
    # an unavailable provider is this machine's problem: exit 3 with advice for this install
    return require_session(check_readable(model), ALIASES.get(provider.lower(), provider))


def run_batched(session: Any, input_name: str, x: np.ndarray) -> np.ndarray:
    """The first output for `x`; a file exported with a static batch gets chunks of that size (the
    last one padded by repeating rows, the padding dropped from the output)."""
    static = session.get_inputs()[0].shape[0]
    if not isinstance(static, int) or static == len(x):
        return session.run(None, {input_name: x})[0]
    outs = []
    for start in range(0, len(x), static):
        chunk = x[start : start + static]
        padded = np.resize(chunk, (static, *chunk.shape[1:])) if len(chunk) < static else chunk
        outs.append(session.run(None, {input_name: padded})[0][: len(chunk)])
    return np.concatenate(outs)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predict(cfg: PredictConfig, out: Reporter | None = None) -> dict[str, Any]:
    """Run the model on every image; returns {"predictions": [...], "skipped": [...], ...}."""
    out = out or quiet()
    if cfg.batch_size < 1:
        raise BadInput(f"--batch-size {cfg.batch_size}: needs a positive integer.", hint="e.g. 32")
    session = open_session(cfg.model, cfg.provider)
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
    if cfg.save_csv is not None:
        check_csv_target(cfg.save_csv)
    pre_dict = meta.get("preprocess") or {}
    pre = Preprocess.from_dict(pre_dict)
    paths, skipped = collect_images(cfg.images)
    good, outputs = [], []
    # a bar for folders and long lists; a few named files finish before a bar would show
    total = (
        len(paths)
        if len(paths) > cfg.batch_size or any(Path(i).is_dir() for i in cfg.images)
        else 0
    )
    with out.progress("predicting", total) if total else _no_bar() as advance:
        for start in range(0, len(paths), cfg.batch_size):
            chunk, batch = [], []
            for p in paths[start : start + cfg.batch_size]:
                try:
                    px = pre.pixels(decode(p))
                except BadImage as exc:
                    skipped.append((str(p), str(exc)))
                    continue
                chunk.append(p)
                batch.append(
                    px.astype(np.float32) if pre_dict.get("in_graph") else pre.normalize(px)
                )
            if batch:
                x = np.stack(batch).astype(np.float32)
                outputs.append(run_batched(session, meta["input"]["name"], x))
                good += chunk
            advance(len(paths[start : start + cfg.batch_size]))
    if not good:
        raise BadInput("None of the images could be decoded.", hint="See the skipped files listed.")
    result = np.concatenate(outputs)
    provider = session.get_providers()[0]
    if kind == "classifier":
        rows = _classify(good, result, meta, cfg.top_k)
    else:
        rows = _write_arrays(good, result, meta, part, cfg.out)
    payload = {"model": str(cfg.model), "kind": kind, "part": part, "provider": provider,
               "predictions": rows, "skipped": [{"file": f, "reason": r} for f, r in skipped]}  # fmt: skip
    if cfg.save_csv is not None:
        payload["csv"] = str(write_csv(cfg.save_csv, rows, payload["skipped"]))
    return payload


@contextmanager
def _no_bar() -> Iterator[Callable[..., None]]:
    yield lambda n=1, **fields: None


def check_csv_target(path: Path) -> None:
    """Fail before any work when --save-csv cannot be written there."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"--save-csv {path} is a folder.", hint="Name a file, e.g. predictions.csv.")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise BadInput(
            f"--save-csv {path}: {parent} is not a folder.", hint="Name a writable file."
        )


def write_csv(path: Path, rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> Path:
    """One row per input file, written atomically with the csv module (quoting any name):
    classifiers `path, top1_class, top1_probability, ..., topK_*, error`; autoencoders
    `path, output, error`; skipped files keep their row with only `error` filled in."""
    k = max((len(r["top"]) for r in rows if "top" in r), default=0)
    if k:
        columns = ["path"] + [
            f"top{i}_{f}" for i in range(1, k + 1) for f in ("class", "probability")
        ]
    else:
        columns = ["path", "output"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*columns, "error"])
    for r in rows:
        if "top" in r:
            cells = [c for t in r["top"] for c in (t["class"], f"{t['probability']:.6g}")]
        else:
            cells = [r.get("reconstruction") or r.get("latent") or ""]
        writer.writerow([r["file"], *cells, *[""] * (len(columns) - 1 - len(cells)), ""])
    for s in skipped:
        writer.writerow([s["file"], *[""] * (len(columns) - 1), s["reason"]])
    try:
        return write_text(path, buf.getvalue())
    except OSError as exc:
        raise BadInput(
            f"--save-csv {path} cannot be written: {exc.strerror or exc}.",
            hint="Choose a writable place.",
        ) from None


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


def output_names(paths: list[Path]) -> list[str]:
    """One output name per input, without suffix: the file's stem when that is unique, else the
    shortest trailing part of its path that tells it apart (`a/x.png`, `b/x.png` -> `a/x`, `b/x`,
    written in subfolders), and the extension when only that differs (`x.png`, `x.jpg` ->
    `x_png`, `x_jpg`); a name that still meets another file's (`x_png.png` beside those) gets
    `~2`, `~3`, ... The same file given twice gets the same name."""
    full = [p.resolve() for p in paths]
    by_stem: dict[str, list[Path]] = {}
    for p in dict.fromkeys(full):
        by_stem.setdefault(p.stem, []).append(p)

    def tail(p: Path, depth: int, ext: bool) -> str:
        parts = list(p.parts[-depth:])
        parts[-1] = p.stem + (f"_{p.suffix.lstrip('.')}" if ext else "")
        return "/".join(parts).lstrip("/")

    names: dict[Path, str] = {}
    for group in by_stem.values():  # only files sharing a stem go deeper
        deepest = max(len(p.parts) for p in group)
        tries = [(ext, depth) for ext in (False, True) for depth in range(1, deepest + 1)]
        for ext, depth in tries:  # the last (whole path and extension) always tells them apart
            tails = {p: tail(p, depth, ext) for p in group}
            if len(set(tails.values())) == len(group):
                names.update(tails)
                break
    used: set[str] = set()
    for p, name in names.items():
        n, unique = 1, name
        while unique in used:
            n += 1
            unique = f"{name}~{n}"
        used.add(unique)
        names[p] = unique
    return [names[p] for p in full]


def _write_arrays(
    paths: list[Path], out: np.ndarray, meta: dict[str, Any], part: str, folder: Path
) -> list[dict[str, Any]]:
    """Autoencoder: reconstructions as PNG (full) or latent vectors as .npy (encoder)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, name, y in zip(paths, output_names(paths), out, strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if part == "encoder":
            target = folder / f"{name}.latent.npy"
            with atomic_path(target, suffix=".npy") as tmp:
                np.save(tmp, y.astype(np.float32), allow_pickle=False)
            rows.append(
                {"file": str(path), "latent": str(target), "norm": float(np.linalg.norm(y))}
            )
            continue
        img = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)  # outputs are in [0, 1]
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        target = folder / f"{name}.reconstruction.png"
        with atomic_path(target, suffix=".png") as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        rows.append({"file": str(path), "reconstruction": str(target)})
    return rows
