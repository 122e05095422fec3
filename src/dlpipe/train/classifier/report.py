"""The end of a fine-tune run: best weights on the held-out split, plots, summary, result dict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ...checkpoint import load_checkpoint
from ...console import shown
from ...plots import plot_confusion, plot_curves
from .loop import evaluate
from .session import Session


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows true class, columns predicted."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def held_out(s: Session) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test split (val when there is no test split)."""
    best = s.run.checkpoint("best")
    if best.exists():
        s.model.load_state_dict(load_checkpoint(best, str(s.device)).weights["model"])
    s.model.eval()
    split = "test" if len(s.data.test) else "val"
    frozen = s.cfg.frozen and s.stage == "frozen"
    src, fwd = s.source(split, frozen)
    res, pred = evaluate(fwd, src, nn.CrossEntropyLoss(), accel=s.accel)
    true = src.labels.cpu().numpy()[src.real(np.arange(len(src)))]  # stand-ins not counted
    names = s.data.ds.class_names
    cm = confusion(true, pred, len(names))
    per_class = {n: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None
                 for i, n in enumerate(names)}  # fmt: skip
    return {"split": split, "n": len(true), "acc": res["acc"], "loss": res["loss"],
            "per_class": per_class, "confusion": cm}  # fmt: skip


def finish(s: Session) -> dict[str, Any]:
    """Held-out metrics, PNGs, final checkpoints, summary; returns the command's result dict."""
    ho = held_out(s)
    rows = s.run.read_metrics()
    curves = plot_curves(rows, {"loss": ["train_loss", "val_loss"],
                                "accuracy": ["train_acc", "val_acc"]},
                         s.run.path / "curves.png")  # fmt: skip
    cm_png = _confusion_png(s, ho)
    metrics = {
        "held_out_acc": ho["acc"], "test_acc": ho["acc"], "test_loss": ho["loss"],
        "held_out_split": ho["split"], "held_out_size": ho["n"],
        "best_val_acc": s.best["acc"], "best_epoch": s.best["epoch"], "epochs_run": s.epoch,
        "stage": s.stage, "stopped": s.stopped, "feature_cache": s.cache_how,
        "processes": s.ctx.world_size, "amp": s.accel.amp if s.accel else "off",
        "per_class_acc": ho["per_class"], "seconds": round(time.perf_counter() - s.started, 2),
    }  # fmt: skip
    metrics |= recipe_notes(s, rows) | _nothing_held_out(s, ho)
    last = rows[-1] if rows else {}
    measured = ("train_loss", "train_acc", "val_loss", "val_acc")
    for key in measured if len(s.data.val) else measured[:2]:  # no val: epochs scored train
        if key in last:
            metrics[f"last_{key}"] = float(last[key])
    s.run.write_json("metrics.json", {**metrics, "confusion": ho["confusion"].tolist()})
    for name in ("best", "last"):  # the final metrics travel with the weights
        if s.run.checkpoint(name).exists():
            _rewrite_metrics(s, name, metrics)
    artifacts = {
        "best": str(s.run.checkpoint("best")), "last": str(s.run.checkpoint("last")),
        "metrics_csv": str(s.run.metrics_path), "curves": str(curves),
        **({"confusion": str(cm_png)} if cm_png else {}),
        "metrics_json": str(s.run.path / "metrics.json"),
    }  # fmt: skip
    summary(s, metrics, artifacts)
    return {"run_dir": str(s.run.path), "artifacts": artifacts, "metrics": metrics,
            "backbone": s.info, "weights": s.weights}  # fmt: skip


def _confusion_png(s: Session, ho: dict[str, Any]) -> Path | None:
    """confusion.png of the held-out split; None when there was nothing held out to plot."""
    if not ho["n"]:
        return None
    title = f"{s.info['backbone']} on {s.cfg.data}: held-out {ho['split']} split"
    cm_png = plot_confusion(ho["confusion"], s.data.ds.class_names, s.run.path / "confusion.png",
                            title=title, accuracy=ho["acc"])  # fmt: skip
    s.run.log_image("confusion", cm_png, s.epoch)
    return cm_png


def _nothing_held_out(s: Session, ho: dict[str, Any]) -> dict[str, Any]:
    """Without held-out images there is no held-out split, and the best "val" accuracy was
    measured on the training images: null, with the reason (the run warned about it up front)."""
    if ho["n"]:
        return {}
    notes: dict[str, Any] = {"held_out_split": None}
    if not len(s.data.val):
        notes["best_val_acc"] = None  # the epochs validated on the training images
    return notes | {"held_out_note": f"no held-out images: {s.data.why_nothing_held_out(s.cfg)}"}


def recipe_notes(s: Session, rows: list[dict[str, str]]) -> dict[str, Any]:
    """What the recipe chose: the head fit, BatchNorm after the unfreeze, and whether unfreezing
    beat the frozen head (if not, the frozen stage's checkpoint stays "best": it is the one
    evaluated here and the one `dlpipe export` takes)."""
    notes: dict[str, Any] = {}
    if s.head_fit:
        notes["head_fit"] = s.head_fit["how"]
        notes["head_fit_method"] = s.head_fit["method"]
        if "weight_decay" in s.head_fit:
            notes["head_weight_decay"] = s.head_fit["weight_decay"]
    if not s.cfg.staged:
        return notes
    notes["batchnorm_after_unfreeze"] = (
        "kept its pretrained statistics"
        if s.keeps_bn
        else "trained on batch statistics (--train-bn)"
    )
    best = {st: max((float(r["val_acc"]) for r in rows if r.get("stage") == st), default=None)
            for st in ("frozen", "unfrozen")}  # fmt: skip
    if best["frozen"] is not None and best["unfrozen"] is not None:
        helped = best["unfrozen"] > best["frozen"]
        notes["unfreeze_helped"] = helped
        notes["unfreeze"] = (
            f"unfreezing raised val acc {best['frozen']:.4f} -> {best['unfrozen']:.4f}"
            if helped else
            f"unfreezing did not beat the frozen head (val acc {best['unfrozen']:.4f} vs "
            f"{best['frozen']:.4f}): the frozen stage's checkpoint is kept as best and exported"
        )  # fmt: skip
    return notes


def _rewrite_metrics(s: Session, name: str, metrics: dict[str, Any]) -> None:
    """Re-save a checkpoint with meta['metrics'] filled in (state and weights unchanged)."""
    from ...checkpoint import save_checkpoint

    ck = load_checkpoint(s.run.checkpoint(name))
    ck.meta["metrics"] = metrics
    save_checkpoint(ck.path, ck.weights, ck.meta, ck.state)


def summary(s: Session, metrics: dict[str, Any], artifacts: dict[str, str]) -> None:
    """One screen: what was trained on what, how well, and where everything went."""
    from rich.table import Table

    d, w = s.data, s.weights
    t = Table(title=f"finetune {s.info['backbone']} on {s.cfg.data}", show_header=False)
    t.add_row("backbone", f"{s.info['backbone']} ({s.info['family']}), {s.info['feature_size']} "
              f"features, replaced '{s.info['replaced']}'")  # fmt: skip
    wtxt = f"{w.get('source')} {w.get('name') or ''} {w.get('file') or ''}".strip()
    t.add_row("weights", wtxt + (f" ({w['note']})" if w.get("note") else ""))
    t.add_row("data", f"train {len(d.train)}, val {len(d.val)}, test {len(d.test)}; "
              f"{len(d.ds.class_names)} classes")  # fmt: skip
    pre = s.preprocess
    t.add_row("input", f"resize {pre.resize} crop {pre.crop} -> {pre.channels}x{pre.output_size}"
              f" ({pre.interpolation})")  # fmt: skip
    t.add_row("training", f"{metrics['epochs_run']} epochs, stage {s.stage}"
              f"{'' if s.cfg.pretrained else ' (from scratch)'}, features "
              f"{metrics['feature_cache']}, {metrics['seconds']} s")  # fmt: skip
    for key, label in (("head_fit", "head fit"), ("batchnorm_after_unfreeze", "BatchNorm"),
                       ("unfreeze", "unfreeze")):  # fmt: skip
        if key in metrics:
            t.add_row(label, str(metrics[key]))
    if metrics["held_out_size"]:
        t.add_row("best val acc", f"{metrics['best_val_acc']:.4f} (epoch {metrics['best_epoch']})")
        t.add_row(f"held-out acc ({metrics['held_out_split']}, n={metrics['held_out_size']})",
                  f"[bold]{metrics['held_out_acc']:.4f}[/]")  # fmt: skip
    else:
        t.add_row("held-out acc", "[bold]none[/]: no held-out images (see the warning above)")
    worst = sorted((v, k) for k, v in metrics["per_class_acc"].items() if v is not None)[:3]
    if worst:
        t.add_row("weakest classes", ", ".join(f"{shown(k)} {v:.3f}" for v, k in worst))
    s.out.print(t)
    s.run.log(f"held-out acc {metrics['held_out_acc']:.4f}" if metrics["held_out_size"] else
              metrics["held_out_note"])  # fmt: skip
    s.out.print(f"run folder: {s.run.path} (checkpoints/best|last.safetensors, "
                f"{', '.join(Path(p).name for k, p in artifacts.items() if k not in ('best', 'last'))})")  # fmt: skip
