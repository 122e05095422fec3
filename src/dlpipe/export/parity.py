"""`dlpipe validate`: each runtime (onnxruntime per provider, OpenVINO, tract) against PyTorch.

Order (optimum's, but a failure FAILS): the provider/runtime really runs the file, I/O names, output
shapes at every batch size (including sizes other than the export batch), then values and task
agreement on real held-out inputs (through the stored preprocessing) and random ones, then latency
beside torch eager. Every runtime gets the same inputs, tolerances and task checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from . import compare, files, metadata
from .inputs import InputSet, build_inputs
from .providers import parse_providers, runner_of, session_for
from .runtimes import RUNTIMES, Runner, RuntimeCannotLoad, parse_runtimes


@dataclass
class ValidateConfig:
    """Options of `dlpipe validate` (also built by `export --validate` and the pipeline runner)."""

    model: Path  # the .onnx file
    against: str | None = None  # run folder or checkpoint; default: the source in the metadata
    providers: str = "auto"  # auto (every provider that really runs here) or cpu,cuda,tensorrt
    runtimes: str = "onnxruntime"  # all (every runtime installed) or onnxruntime,openvino,tract
    openvino_precision: str = "f32"  # f32 (exact), bf16 (AMX CPUs' own default) or auto
    batch_sizes: list[int] = field(default_factory=lambda: [1, 3, 8])  # include sizes != export's
    inputs: str = "both"  # real (held-out data, deployed preprocessing), random, or both
    n: int = 64  # inputs per set; 16-256 is sensible (more = slower, tighter p99)
    atol: float | None = None  # override the dtype preset's absolute tolerance
    rtol: float | None = None  # override the dtype preset's relative tolerance
    latency_runs: int = 20  # timed runs per provider and batch size after 3 warm-ups (0: skip)
    seed: int = 0  # seed of the random inputs and latent vectors
    write_report: bool = True  # NAME.parity.json and NAME.parity.md beside the model


def report_paths(model: Path) -> tuple[Path, Path]:
    """NAME.parity.json and NAME.parity.md beside NAME.onnx (several models share exports/)."""
    return model.with_suffix(".parity.json"), model.with_suffix(".parity.md")


def _reference(meta: dict[str, Any], against: str | None) -> tuple[Any, Path, list[str]]:
    """The PyTorch module the ONNX file must match, its checkpoint, and notes."""
    from ..checkpoint import file_sha256, load_checkpoint
    from .spec import build_exportable, resolve_checkpoint

    source = against or (meta.get("source") or {}).get("checkpoint")
    if not source:
        raise BadInput(
            "No checkpoint to compare against.", hint="Pass --against RUN_DIR|CHECKPOINT."
        )
    if not against and not Path(source).exists():
        raise BadInput(
            f"The checkpoint this model was exported from ({source}) is not there any more.",
            hint="Pass --against RUN_DIR|CHECKPOINT.",
        )
    path = resolve_checkpoint(source)
    notes = []
    sha = (meta.get("source") or {}).get("sha256")
    if sha and file_sha256(path) != sha:
        notes.append(f"{path} is not the checkpoint the model was exported from (sha256 differs)")
    ckpt = load_checkpoint(path)
    pre = meta.get("preprocess") or {}
    softmax = meta["output"]["kind"] == "probabilities"
    model = build_exportable(ckpt, meta.get("part", "full"), bool(pre.get("in_graph")), softmax)
    return (model, ckpt), path, notes


def _encoder_of(ckpt: Any):  # noqa: ANN202 - decoder validation needs real latents
    import torch

    from .spec import build_exportable

    enc = build_exportable(ckpt, "encoder")

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return enc(torch.from_numpy(x)).numpy().astype(np.float32)

    return encode


def _batches(x: np.ndarray, bs: int) -> list[np.ndarray]:
    """Full batches of size bs; too few samples are repeated so every size is exercised."""
    if len(x) < bs:
        x = np.resize(x, (bs, *x.shape[1:]))
    return [x[i : i + bs] for i in range(0, len(x) - bs + 1, bs)]


def _compare_runner(
    runner: Runner,
    torch_model: Any,
    meta: dict[str, Any],
    sets: list[InputSet],
    cfg: ValidateConfig,
    tol: Any,
    refs: dict[tuple, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Names, shapes at each batch size, values and task agreement for one runtime/provider.
    `refs` keeps PyTorch's outputs per (device, set, batch size, batch): every runtime is compared
    with the same reference, computed once."""
    tag = runner.tag
    want = (meta["input"]["name"], meta["output"]["name"])
    have = (runner.input_name, runner.output_name)
    rows = [
        compare.check(
            f"names {tag}",
            want == have,
            f"input {have[0]!r}, output {have[1]!r}",
            f"Expected input {want[0]!r} and output {want[1]!r} (from the metadata): the graph was renamed or is another model.",
        )
    ]
    if not rows[0]["ok"]:
        return rows
    sizes = [runner.static_batch] if runner.static_batch else cfg.batch_sizes
    torch_model.to(runner.device)  # the reference runs where the runtime runs (CUDA for CUDA)
    for s in sets:
        got_all, ref_all = [], []
        for bs in sizes:
            shapes_ok, shape_note = True, ""
            for i, xb in enumerate(_batches(s.x, bs)):
                try:
                    got = np.asarray(runner.run(xb))
                except Exception as exc:  # a runtime that loads a file but cannot run it
                    rows.append(_run_failed(tag, s.name, bs, exc))
                    return rows
                ref = _reference_output(torch_model, runner.device, xb,
                                        (str(runner.device), s.name, bs, i), refs)  # fmt: skip
                if got.shape != ref.shape:
                    shapes_ok, shape_note = False, f"onnx {got.shape} vs torch {ref.shape}"
                    break
                got_all.append(got.astype(np.float32))
                ref_all.append(ref)
            rows.append(
                compare.check(
                    f"shapes {tag} {s.name} batch {bs}",
                    shapes_ok,
                    shape_note or f"{tuple(ref.shape)} as torch",
                    "The output shape differs at this batch size: a dimension was frozen at export "
                    "(export with a batch >= 2 and --dynamic-batch).",
                )
            )
            if not shapes_ok:
                return rows
        got_cat, ref_cat = np.concatenate(got_all), np.concatenate(ref_all)
        labels = _labels_for(s, sizes)
        rows += compare.value_checks(
            f"{tag} {s.name}", got_cat, ref_cat, tol, meta["output"]["kind"], labels
        )
    return rows


def _reference_output(
    torch_model: Any, device: Any, xb: np.ndarray, key: tuple, refs: dict[tuple, np.ndarray] | None
) -> np.ndarray:
    """PyTorch's output for batch `xb` on `device`, computed once per `key` when `refs` is kept."""
    ref = (refs or {}).get(key)
    if ref is None:
        import torch

        with torch.no_grad():
            ref = torch_model(torch.from_numpy(xb).to(device)).float().cpu().numpy()
        if refs is not None:
            refs[key] = ref
    return ref


def _run_failed(tag: str, set_name: str, bs: int, exc: Exception) -> dict[str, Any]:
    text = " / ".join(ln.strip() for ln in str(exc).splitlines()[:3] if ln.strip())
    return compare.check(
        f"run {tag} {set_name} batch {bs}",
        False,
        f"{type(exc).__name__}: {text[:300]}",
        "The runtime loaded the file but failed to run it at this batch size.",
    )


def _labels_for(s: InputSet, sizes: list[int]) -> np.ndarray | None:
    """Labels lined up with the concatenated outputs of every batch size."""
    if s.labels is None:
        return None
    parts = [lab for bs in sizes for lab in _batches(s.labels, bs)]
    return np.concatenate(parts) if parts else None


def validate(cfg: ValidateConfig) -> dict[str, Any]:
    """Run every check; returns the report dict (report["passed"] decides the exit code)."""
    from .latency import measure_latency

    model_path = files.check_readable(cfg.model)
    proto = files.open_model(model_path)
    meta = metadata.from_proto(proto, model_path)
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise BadInput("--batch-sizes needs positive integers.", hint="e.g. --batch-sizes 1,3,8")
    names, notes = parse_runtimes(cfg.runtimes)  # a runtime that is not installed: exit 3 now
    (torch_model, ckpt), ckpt_path, more = _reference(meta, cfg.against)
    notes += more
    shape = tuple(meta["input"]["shape"][1:])
    encode = (
        _encoder_of(ckpt)
        if meta["input"]["kind"] == "latent" and meta["kind"] == "autoencoder"
        else None
    )
    sets = build_inputs(meta, shape, cfg.inputs, cfg.n, cfg.seed, encode)
    dtype = meta.get("dtype", "fp32")
    tol = compare.preset(dtype, cfg.atol, cfg.rtol)
    rows: list[dict[str, Any]] = []
    providers: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    tolerances: dict[str, Any] = {}
    refs: dict[tuple, np.ndarray] = {}  # PyTorch's outputs, shared by every runtime
    for name in names:
        for runner, opened in _open(name, model_path, cfg, providers):
            rows.append({**opened, "runtime": name})
            if runner is None:
                continue
            judged_by = _tolerance_for(runner, dtype, cfg, tol)
            tolerances[runner.tag] = compare.tolerance_dict(judged_by)
            checks = _compare_runner(runner, torch_model, meta, sets, cfg, judged_by, refs)
            rows += [{**r, "runtime": name} for r in checks]
            ran = not any(r["check"].startswith("run ") for r in checks)
            if cfg.latency_runs and ran:
                latency += measure_latency(
                    runner, torch_model, shape, cfg.batch_sizes, cfg.latency_runs
                )
    return {
        "model": str(model_path),
        "against": str(ckpt_path),
        "kind": meta.get("kind"),
        "part": meta.get("part"),
        "dtype": dtype,
        "tolerance": compare.tolerance_dict(tol),
        "tolerances": tolerances,
        "inputs": [{"name": s.name, "n": len(s.x), "note": s.note} for s in sets],
        "providers": providers,
        "runtimes": summarize(rows, latency, names),
        "checks": rows,
        "latency": latency,
        "notes": notes,
        "passed": bool(rows) and all(r["ok"] for r in rows),
    }


def _open(
    name: str, model: Path, cfg: ValidateConfig, providers: list[dict[str, Any]]
) -> list[tuple[Runner | None, dict[str, Any]]]:
    """Runners for one runtime (one per onnxruntime provider), each with its 'it runs' check."""
    if name == "onnxruntime":
        out = []
        for provider in parse_providers(cfg.providers):
            session, result = session_for(model, provider)
            providers.append({**vars(result), "unavailable": result.unavailable})
            row = compare.check(
                f"provider {result.name}",
                result.ok,
                "runs" if result.ok else result.reason,
                f"{result.reason} {result.advice}".strip(),
                unavailable=result.unavailable,
                advice=result.advice,
            )
            out.append((runner_of(session) if session is not None else None, row))
        return out
    options = {"precision": cfg.openvino_precision} if name == "openvino" else {}
    version = RUNTIMES[name].version()
    try:
        runner = RUNTIMES[name].open(model, **options)
    except RuntimeCannotLoad as exc:
        explain = (
            f"{exc}. The file is valid ONNX (onnxruntime loads it) but {name} {version} rejects it."
        )
        if name == "tract" and "F16" in str(exc):
            explain += " tract refuses a float16 Gemm with bias: re-export with this dlpipe (--fp16 writes MatMul+Add)."
        return [(None, compare.check(f"load {name}", False, str(exc), explain))]
    return [(runner, compare.check(f"load {name}", True, f"{runner.label} ({name} {version})"))]


def _tolerance_for(runner: Runner, dtype: str, cfg: ValidateConfig, tol: Any) -> Any:
    """OpenVINO computing in bf16 is judged like fp16 (8-bit mantissa: float32 bounds cannot hold)."""
    if runner.runtime == "openvino" and runner.precision != "f32" and dtype == "fp32":
        return compare.preset("fp16", cfg.atol, cfg.rtol)
    return tol


def summarize(
    rows: list[dict[str, Any]], latency: list[dict[str, Any]], names: list[str]
) -> dict[str, Any]:
    """Per runtime: passed, worst max/mean error, lowest top-1 agreement, latency (ms) per batch."""
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in rows if r.get("runtime") == name]
        stats = [r["stats"] for r in mine if r["check"].startswith("values") and "stats" in r]
        if not stats:  # int8 files have no element-wise check: the cosine rows carry the stats
            stats = [r["stats"] for r in mine if "stats" in r]
        top1 = [r["top1_agreement"] for r in mine if "top1_agreement" in r]
        lat = {
            f"batch_{r['batch']}": r["onnx"]["median_ms"] for r in latency if r["runtime"] == name
        }
        out[name] = {
            "passed": bool(mine) and all(r["ok"] for r in mine),
            "version": RUNTIMES[name].version(),
            "max_abs_error": max((s["max_abs"] for s in stats), default=None),
            "mean_abs_error": max((s["mean_abs"] for s in stats), default=None),
            "top1_agreement": min(top1, default=None),
            "latency_ms": lat,
            "failed": [r["check"] for r in mine if not r["ok"]],
        }
    return out


def validate_stage(cfg: ValidateConfig) -> dict[str, Any]:
    """Validate and write NAME.parity.json/.md; the stage function the CLI and pipelines call."""
    from .report import write_reports

    report = validate(cfg)
    if cfg.write_report:
        json_path, md_path = report_paths(Path(cfg.model))
        report["artifacts"] = {"parity_json": str(json_path), "parity_md": str(md_path)}
        write_reports(report, json_path, md_path)
    return report
