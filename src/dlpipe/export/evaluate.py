"""`dlpipe eval`: accuracy, per-class accuracy and a confusion matrix of a classifier on any labeled
folder or built-in set, what `yolo val` users expect.

An `.onnx` file is scored through onnxruntime, Pillow and NumPy only (no torch: the deployed path);
a run folder or checkpoint through the PyTorch model it describes. Either way the images go through
the preprocessing stored with the model, in batches, so memory stays flat on any data set size. The
data's classes are matched to the model's by name, never by position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..console import Reporter, quiet
from ..data import open_source
from ..data.decode import BadImage
from ..data.preprocess import Preprocess
from ..data.splits import spread
from ..errors import BadInput
from .inputs import model_input, model_split

SPLITS = ("auto", "all", "test", "val", "train")


@dataclass
class EvalConfig:
    """Options of `dlpipe eval`."""

    model: Path  # an .onnx file (onnxruntime, no torch), a run folder or a checkpoint (PyTorch)
    data: str  # built-in set or labeled folder (class subfolders)
    data_root: Path | None = None  # where a built-in set's files are, if not the default place
    split: str = "auto"  # auto: the model's own held-out split on its training data, else all
    limit: int | None = None  # at most N images, stratified by class (quick checks)
    batch_size: int = 64  # images per forward pass; 16-256 is sensible
    provider: str = "cpu"  # .onnx: onnxruntime provider that must really run (cpu, cuda, tensorrt)
    device: str = "auto"  # run folder / checkpoint: torch device (auto, cpu, cuda, cuda:N)
    out: Path | None = None  # folder for confusion.png + eval.json (default runs/eval/<model>)
    runs_dir: Path = Path("runs")  # parent of the default output folder
    strict: bool = False  # fail on unreadable images instead of skipping and listing them


@dataclass
class Scorer:
    """A classifier behind one interface: uint8 pixels in, class probabilities out."""

    meta: dict[str, Any]  # kind, class_names, preprocess, data (checkpoint or ONNX metadata)
    probabilities: Callable[[np.ndarray], np.ndarray]  # float32 model input -> (N, K)
    runs_on: str  # "onnxruntime CPUExecutionProvider" | "torch cpu"
    name: str  # a short name for the output folder


def evaluate(cfg: EvalConfig, out: Reporter | None = None) -> dict[str, Any]:
    """Score the model on the data; writes confusion.png and eval.json; returns the --json dict."""
    out = out or quiet()
    _check_options(cfg)
    scorer = _open_model(cfg)
    names = _class_names(scorer.meta, cfg.model)
    ds = open_source(cfg.data, cfg.data_root, cfg.strict)
    if not ds.labeled:
        raise BadInput(
            f"--data {cfg.data}: the images carry no labels (no class subfolders), so there is "
            "nothing to score against.",
            hint="Give a folder with one subfolder per class, named like the model's classes "
            f"({_some(names)}), or use `dlpipe predict` for unlabeled images.",
        )
    to_model = _match_classes(ds.class_names, names, cfg)
    idx, split_note = _pick(ds, scorer.meta, cfg, out)
    out.print(f"evaluating {cfg.model} ({scorer.runs_on}) on {split_note}")
    cm, top5, nll, skipped = _score(ds, idx, to_model, scorer, cfg, out)
    metrics = _metrics(cm, top5, nll, names)
    folder = _out_folder(cfg, scorer.name)
    title = f"{Path(cfg.model).name} on {split_note.split(': ', 1)[-1]}"
    from ..plots import plot_confusion, top_confusions

    png = plot_confusion(cm, names, folder / "confusion.png", title, metrics["accuracy"])
    result = {
        "model": str(cfg.model), "data": ds.name, "split": split_note, "runs_on": scorer.runs_on,
        "metrics": metrics,
        "artifacts": {"confusion_png": str(png), "eval_json": str(folder / "eval.json")},
        "skipped": [{"file": f, "reason": r} for f, r in [*ds.skipped, *skipped]],
    }  # fmt: skip
    full = {**result, "class_names": names, "confusion": cm.tolist(),
            "top_confusions": top_confusions(cm, names)}  # fmt: skip
    write_text(folder / "eval.json", json.dumps(full, indent=2) + "\n")
    return result


def _check_options(cfg: EvalConfig) -> None:
    if cfg.split not in SPLITS:
        raise BadInput(
            f"--split {cfg.split!r} is unknown.", hint=f"Use one of: {', '.join(SPLITS)}."
        )
    if cfg.batch_size < 1 or (cfg.limit is not None and cfg.limit < 1):
        raise BadInput("--batch-size and --limit need positive integers.")


def _open_model(cfg: EvalConfig) -> Scorer:
    """An .onnx file through onnxruntime (torch is never imported), else a checkpoint via torch."""
    path = Path(cfg.model)
    if path.suffix.lower() == ".onnx":
        from . import metadata
        from .predict import open_session, run_batched

        session = open_session(path, cfg.provider)
        meta = metadata.from_session(session, path)
        name = meta["input"]["name"]
        softmax = meta["output"]["kind"] != "probabilities"

        def probabilities(x: np.ndarray) -> np.ndarray:
            y = run_batched(session, name, x).astype(np.float64)
            return _softmax(y) if softmax else y

        runs_on = f"onnxruntime {session.get_providers()[0]}"
        return Scorer(meta, probabilities, runs_on, path.stem)
    return _torch_scorer(cfg)


def _torch_scorer(cfg: EvalConfig) -> Scorer:
    import torch

    from ..checkpoint import load_checkpoint
    from ..runtime import resolve_device
    from .spec import build_exportable, resolve_checkpoint

    ckpt_path = resolve_checkpoint(cfg.model)
    ckpt = load_checkpoint(ckpt_path)
    _require_classifier(ckpt.meta, ckpt_path)
    device = resolve_device(cfg.device)
    model = build_exportable(ckpt).to(device)

    def probabilities(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = model(torch.from_numpy(x).to(device)).float()
        return torch.softmax(y.double(), dim=-1).cpu().numpy()

    run = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path
    return Scorer(ckpt.meta, probabilities, f"torch {device}", run.name)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _require_classifier(meta: dict[str, Any], where: Path) -> None:
    kind = meta.get("kind")
    if kind != "classifier" or meta.get("part", "full") != "full":
        raise BadInput(
            f"{where} is a {kind} model ({meta.get('part', 'full')}), not a classifier: "
            "`dlpipe eval` scores class predictions.",
            hint="Generators are judged in `dlpipe gan train` (fd/kid), autoencoders by their "
            "held-out PSNR in `dlpipe ae train` and by `dlpipe validate`.",
        )


def _class_names(meta: dict[str, Any], where: Path) -> list[str]:
    _require_classifier(meta, where)
    names = meta.get("class_names")
    if not isinstance(names, list) or not names:
        raise BadInput(
            f"{where} does not record its class names, so they cannot be matched to the data's.",
            hint="Re-export it with `dlpipe export` from a run trained by this dlpipe version.",
        )
    return [str(n) for n in names]


def _some(names: list[str], k: int = 10) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _match_classes(data_names: list[str], model_names: list[str], cfg: EvalConfig) -> np.ndarray:
    """Data label -> model class index, matched by name; a class the model lacks is an error."""
    where = {n: i for i, n in enumerate(model_names)}
    unknown = [n for n in data_names if n not in where]
    if unknown:
        folded = {n.casefold(): n for n in model_names}
        close = [f"{n} ~ {folded[n.casefold()]}" for n in unknown if n.casefold() in folded]
        raise BadInput(
            f"The classes of --data {cfg.data} differ from the model's: {_some(unknown)} "
            f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of {cfg.model} "
            f"(its classes: {_some(model_names)}).",
            hint=(
                f"Names must match exactly (differ only in case: {_some(close)}). " if close else ""
            )
            + "Rename or remove those class folders; a folder with only some of the model's "
            "classes is fine.",
        )
    return np.array([where[n] for n in data_names], dtype=np.int64)


def _pick(ds: Any, meta: dict[str, Any], cfg: EvalConfig, out: Reporter) -> tuple[np.ndarray, str]:
    """The images to score and a line saying which: `auto` takes the model's own held-out split
    when the data is the model's training data, a publisher's test set when there is one, else all."""
    data = meta.get("data") or {}
    own = bool(data.get("fingerprint")) and data.get("fingerprint") == ds.fingerprint
    which = cfg.split
    if which == "auto":
        which = "all"
        if own:
            split = model_split(ds, data)
            which = "test" if len(split.test) else "val"
        elif ds.official_test is not None:
            which = "test"
    if which == "all":
        idx = np.arange(len(ds))
    else:
        idx = getattr(model_split(ds, data), which)
    if own and which in ("all", "train"):
        out.warn(
            f"--split {which}: these images include the ones {cfg.model} was trained on, so the "
            "accuracy is optimistic; the model's held-out split is --split test (or auto)."
        )
    whose = "the model's held-out" if own and which in ("test", "val") else "the"
    note = f"{whose} {which} split of {ds.name}" if which != "all" else f"all of {ds.name}"
    if len(idx) == 0:
        raise BadInput(
            f"The {which} split of {ds.name} is empty.", hint="Use --split all (or another split)."
        )
    if cfg.limit is not None and cfg.limit < len(idx):
        idx = idx[spread(ds.labels[idx], cfg.limit)]
        note = f"{len(idx)} images (--limit, stratified by class) of {note}"
    else:
        note = f"{len(idx)} images: {note}"
    return idx, note


def _score(
    ds: Any, idx: np.ndarray, to_model: np.ndarray, scorer: Scorer, cfg: EvalConfig, out: Reporter
) -> tuple[np.ndarray, int, float, list[tuple[str, str]]]:
    """Stream the images in batches: confusion counts, top-5 hits, summed NLL, skipped files."""
    k = len(scorer.meta["class_names"])
    cm = np.zeros((k, k), dtype=np.int64)
    top5, nll = 0, 0.0
    skipped: list[tuple[str, str]] = []
    pre = Preprocess.from_dict(scorer.meta.get("preprocess") or {})
    with out.progress("evaluating", len(idx)) as advance:
        for start in range(0, len(idx), cfg.batch_size):
            chunk = idx[start : start + cfg.batch_size]
            pixels, truth = [], []
            for i in chunk:
                try:
                    pixels.append(pre.pixels(ds.image(i)))
                except BadImage as exc:  # changed or vanished since the folder was read
                    skipped.append((str(ds.paths[i]) if ds.paths else str(i), str(exc)))
                    continue
                truth.append(to_model[ds.labels[i]])
            if pixels:
                p = scorer.probabilities(model_input(scorer.meta, np.stack(pixels)))
                y = np.asarray(truth)
                np.add.at(cm, (y, p.argmax(-1)), 1)
                top5 += int(np.sum(np.argsort(-p, axis=-1)[:, :5] == y[:, None]))
                nll += float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).sum())
            advance(len(chunk))
    if cm.sum() == 0:
        raise BadInput("None of the images could be decoded.", hint="See the skipped files listed.")
    return cm, top5, nll, skipped


def _metrics(cm: np.ndarray, top5: int, nll: float, names: list[str]) -> dict[str, Any]:
    n = int(cm.sum())
    support = cm.sum(axis=1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(names)}  # fmt: skip
    present = [v for v in per_class.values() if v is not None]
    metrics: dict[str, Any] = {
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": float(np.mean(present)),
        "loss": nll / n,
        "images": n,
        "classes": len(names),
        "classes_in_data": len(present),
    }
    if len(names) > 5:
        metrics["top5_accuracy"] = top5 / n
    metrics["per_class_acc"] = per_class
    metrics["per_class_images"] = {name: int(s) for name, s in zip(names, support, strict=True)}
    return metrics


def _out_folder(cfg: EvalConfig, name: str) -> Path:
    """--out as given, else a fresh runs/eval/<model name>[N] (numbered like training runs)."""
    if cfg.out is not None:
        folder = Path(cfg.out)
        if folder.exists() and not folder.is_dir():
            raise BadInput(f"--out {folder} is a file, not a folder.", hint="Name a folder.")
        return folder
    from ..runs import create_run_dir

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip("._-") or "eval"
    run = create_run_dir("eval", safe, cfg.runs_dir)
    (run.path / "checkpoints").rmdir()  # an evaluation holds no weights: not a resumable run
    return run.path


def print_summary(out: Reporter, result: dict[str, Any], rows: int = 40) -> None:
    """Per-class accuracy (up to `rows` classes, weakest first beyond that) and the headline."""
    from rich.markup import escape
    from rich.table import Table

    m = result["metrics"]
    per = [(n, a, m["per_class_images"][n]) for n, a in m["per_class_acc"].items() if a is not None]
    if len(per) > rows:
        per = sorted(per, key=lambda t: t[1])[:rows]
    title = "per-class accuracy" + (f" ({rows} weakest)" if len(per) == rows < m["classes"] else "")
    table = Table(title=title)
    for col in ("class", "images", "accuracy"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, acc, count in per:
        table.add_row(escape(name), str(count), f"{acc:.2%}")
    out.print(table)
    top5 = f", top-5 {m['top5_accuracy']:.2%}" if "top5_accuracy" in m else ""
    out.print(
        f"accuracy [bold]{m['accuracy']:.2%}[/] ({m['images']} images{top5}, balanced "
        f"{m['balanced_accuracy']:.2%}, loss {m['loss']:.4f}) on {escape(result['split'])}"
    )
