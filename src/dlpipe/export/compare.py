"""Numbers that decide parity: error statistics, tolerance presets and the explained checks.

Tolerance presets per dtype, and where their numbers come from (DESIGN.md section 5):
- fp32: atol 1e-4, rtol 1e-3. optimum checks with atol 1e-5 by default and raises it up to 1e-2 for
  vision models; Polygraphy uses abs/rel 1e-5. 1e-5 is exact-kernel territory; onnxruntime's fused
  and reordered kernels (Conv+BN folding, different GEMM blocking) differ from torch eager by
  ~1e-6..1e-5 per layer, so a deep CNN's logits land at 1e-5..1e-4. 1e-4 absolute keeps a 10x
  margin over what we measure while a perturbed weight (the negative test) fails by 100x.
- fp16: atol 1e-2, rtol 1e-2. torch.testing's float16 defaults (rtol 1e-3, atol 1e-5) are for a
  single op; a whole network in half precision accumulates ~1e-3 relative error per block.
- int8: no element-wise bound (quantization changes values by design); judged by cosine
  similarity, top-1 agreement / PSNR and, with labels, the accuracy change.
Task checks: top-1 agreement for classifiers, PSNR (dB, data range of the reference) for images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail bounds for one precision."""

    atol: float | None  # element-wise |onnx - torch| <= atol + rtol * |torch|; None: not checked
    rtol: float
    min_cosine: float  # cosine similarity of the flattened outputs
    min_top1: float  # classifiers: share of samples whose argmax agrees
    min_psnr: float  # images: PSNR in dB against the torch output
    source: str


PRESETS = {
    "fp32": Tolerance(
        1e-4,
        1e-3,
        0.99999,
        1.0,
        60.0,
        "optimum 1e-5..1e-2, Polygraphy 1e-5; 10x our measured error",
    ),
    "fp16": Tolerance(
        1e-2, 1e-2, 0.999, 0.98, 40.0, "torch.testing fp16 rtol 1e-3 per op; x10 for a network"
    ),
    "int8": Tolerance(
        None, 0.0, 0.98, 0.90, 25.0, "quantization: task agreement, not element-wise"
    ),
}


def preset(dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The preset for a dtype, with --atol/--rtol overrides."""
    base = PRESETS.get(dtype, PRESETS["fp32"])
    if atol is None and rtol is None:
        return base
    return Tolerance(
        atol if atol is not None else (base.atol if base.atol is not None else 0.0),
        rtol if rtol is not None else base.rtol,
        base.min_cosine,
        base.min_top1,
        base.min_psnr,
        base.source + " (overridden by --atol/--rtol)",
    )


def error_stats(got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """max/mean/p99 absolute error, max relative error, cosine, worst element, count outside tol."""
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got64 - ref64)
    rel = diff / np.maximum(np.abs(ref64), 1e-6)
    denom = np.linalg.norm(got64) * np.linalg.norm(ref64)
    cosine = float(np.dot(got64.ravel(), ref64.ravel()) / denom) if denom else 1.0
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    stats: dict[str, Any] = {
        "max_abs": float(diff.max(initial=0.0)),
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "p99_abs": float(np.percentile(diff, 99)) if diff.size else 0.0,
        "max_rel": float(rel.max(initial=0.0)),
        "cosine": cosine,
        "worst_index": [int(i) for i in worst],
        "worst_values": [float(got64[worst]), float(ref64[worst])] if diff.size else [],
        "elements": int(diff.size),
        "non_finite": int(np.sum(~np.isfinite(got64))),
    }
    if tol.atol is not None:
        stats["outside_tolerance"] = int(np.sum(diff > tol.atol + tol.rtol * np.abs(ref64)))
    return stats


def psnr(got: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as the peak (inf when identical)."""
    mse = float(np.mean((got.astype(np.float64) - ref.astype(np.float64)) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def check(name: str, ok: bool, detail: str, explain: str = "", **data: Any) -> dict[str, Any]:
    """One row of the report: a check, whether it passed, its numbers and, if failed, why."""
    row = {"check": name, "ok": bool(ok), "detail": detail, **data}
    if not ok and explain:
        row["explain"] = explain
    return row


_VALUE_HINT = (
    "The ONNX graph does not compute what the checkpoint computes. Likely causes: the file was "
    "exported from another checkpoint or edited afterwards (compare the sha256 in its metadata), "
    "an operator the exporter lowered differently (try --exporter torchscript / dynamo), or a "
    "tolerance too strict for this precision (--atol/--rtol)."
)


_OVERFLOW_HINT = (
    "{n} ONNX output values are inf/NaN while torch's are finite: an overflow (float16 tops out "
    "at 65504) or a numerically unstable op. "
)


@dataclass(frozen=True)
class Compared:
    """One input set's outputs, what a value check reads."""

    tag: str  # the input set's name, e.g. "real@1"
    got: np.ndarray  # onnx
    ref: np.ndarray  # torch
    tol: Tolerance
    output_kind: str  # logits | probabilities | image | ...
    labels: np.ndarray | None
    stats: dict[str, Any]  # error_stats(got, ref, tol)


# the checks every input set gets, in report order; a check returns its row, or None to stay out
VALUE_CHECKS: list[Callable[[Compared], dict[str, Any] | None]] = []


def value_check(fn: Callable[[Compared], dict[str, Any] | None]) -> Callable[..., Any]:
    """Register `fn` as a value check (adding a check is this decorator and its test)."""
    VALUE_CHECKS.append(fn)
    return fn


def value_checks(
    tag: str,
    got: np.ndarray,
    ref: np.ndarray,
    tol: Tolerance,
    output_kind: str,
    labels: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Every registered check's row for one input set (values, cosine, then the task metric)."""
    c = Compared(tag, got, ref, tol, output_kind, labels, error_stats(got, ref, tol))
    return [row for fn in VALUE_CHECKS if (row := fn(c)) is not None]


@value_check
def _elementwise(c: Compared) -> dict[str, Any] | None:
    """|onnx - torch| within atol + rtol*|torch| everywhere (not for int8: atol None)."""
    stats, tol = c.stats, c.tol
    if tol.atol is None:
        return None
    bad = stats["outside_tolerance"]
    detail = (
        f"max {stats['max_abs']:.3g} mean {stats['mean_abs']:.3g} p99 {stats['p99_abs']:.3g} "
        f"rel {stats['max_rel']:.3g}; {bad}/{stats['elements']} outside atol {tol.atol:g} + rtol {tol.rtol:g}"
    )
    explain = _OVERFLOW_HINT.format(n=stats["non_finite"]) if stats["non_finite"] else ""
    explain += (
        f"Largest difference {stats['max_abs']:.4g} at output index {stats['worst_index']} "
        f"(onnx {stats['worst_values'][0]:.6g} vs torch {stats['worst_values'][1]:.6g}). "
        + _VALUE_HINT
        if stats["worst_values"]
        else _VALUE_HINT
    )
    return check(f"values {c.tag}", bad == 0, detail, explain, stats=stats)


@value_check
def _cosine(c: Compared) -> dict[str, Any]:
    """Cosine similarity of the flattened outputs."""
    cosine, least = c.stats["cosine"], c.tol.min_cosine
    ok = cosine >= least
    return check(f"cosine {c.tag}", ok, f"{cosine:.7f} (min {least})", _VALUE_HINT, stats=c.stats)


@value_check
def _task_check(c: Compared) -> dict[str, Any]:
    """The task's own agreement: top-1 (and accuracy with labels) or PSNR for images."""
    got, ref, tol, labels = c.got, c.ref, c.tol, c.labels
    if c.output_kind in ("logits", "probabilities"):
        agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
        data: dict[str, Any] = {"top1_agreement": agree}
        detail = f"{agree:.2%} of {len(got)} samples (min {tol.min_top1:.0%})"
        if labels is not None and np.all(labels >= 0):
            acc_onnx = float(np.mean(got.argmax(-1) == labels))
            acc_torch = float(np.mean(ref.argmax(-1) == labels))
            data.update(
                accuracy_onnx=acc_onnx,
                accuracy_torch=acc_torch,
                accuracy_change=acc_onnx - acc_torch,
            )
            detail += f"; accuracy onnx {acc_onnx:.2%} vs torch {acc_torch:.2%}"
        explain = (
            "Predicted classes change between PyTorch and ONNX: deployed results would differ."
        )
        return check(f"top-1 {c.tag}", agree >= tol.min_top1, detail, explain, **data)
    if c.output_kind == "image":
        value = psnr(got, ref)
        ok = value >= tol.min_psnr
        return check(
            f"psnr {c.tag}", ok, f"{value:.1f} dB (min {tol.min_psnr:g})", _VALUE_HINT, psnr=value
        )
    return check(
        f"task {c.tag}", True, f"no task metric for {c.output_kind} outputs (values above decide)"
    )


def tolerance_dict(tol: Tolerance) -> dict[str, Any]:
    """JSON-able tolerance."""
    return asdict(tol)
