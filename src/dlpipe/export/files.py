"""Reading and writing ONNX files: clear errors for bad files, atomic writes with external data."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BadInput, CheckFailed


def data_path(model_path: Path) -> Path:
    """Where a model's external weights live (NAME.onnx.data beside it)."""
    return model_path.with_name(model_path.name + ".data")


def check_readable(path: str | Path) -> Path:
    """Fail clearly for a missing path, a folder, or an empty file."""
    path = Path(path)
    if not path.exists():
        raise BadInput(
            f"{path} does not exist.", hint="Pass an .onnx file written by dlpipe export."
        )
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not an ONNX file.", hint="Pass the .onnx file itself.")
    if path.stat().st_size == 0:
        raise BadInput(f"{path} is empty (0 bytes).", hint="Re-export the model.")
    return path


def open_model(path: str | Path, load_external: bool = False) -> Any:
    """onnx.load with one clear error for files that are not (complete) ONNX models."""
    import onnx

    path = check_readable(path)
    try:
        model = onnx.load(str(path), load_external_data=load_external)
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise BadInput(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}).",
            hint="Is it truncated or another kind of file? Re-export it with `dlpipe export`.",
        ) from None
    if not model.graph.node and not model.graph.output:
        raise BadInput(
            f"{path} parsed as protobuf but holds no ONNX graph.",
            hint="It is not an ONNX model; pass the .onnx file written by `dlpipe export`.",
        )
    return model


def refuse_overwrite(path: Path, force: bool) -> None:
    """Never overwrite an export without --force."""
    if path.exists() and not force:
        raise BadInput(
            f"{path} already exists.",
            hint="Pass --force to overwrite it, or choose another path with --out.",
        )


def save_model(
    model: Any,
    target: Path,
    external_data: bool,
    check: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write model (+ NAME.onnx.data) into a temp folder, check it there, then rename into place.

    The data file is renamed first and the model last, so a model file never points at weights
    that are not there; a stale data file from an earlier single-file export is removed.
    """
    import onnx

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        tmp = tmpdir / target.name
        onnx.save_model(
            model,
            str(tmp),
            save_as_external_data=external_data,
            all_tensors_to_one_file=True,
            location=data_path(target).name,
            size_threshold=1024,
        )
        if check:
            check(tmp)
        written = [target]
        if external_data and data_path(tmp).exists():
            _fsync(data_path(tmp))
            os.replace(data_path(tmp), data_path(target))
            written.append(data_path(target))
        elif data_path(target).exists():
            data_path(target).unlink()
        _fsync(tmp)
        os.replace(tmp, target)
        return written
    except OSError as exc:  # disk full, folder not writable: the previous export is untouched
        raise write_error(target, exc) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_error(target: Path, exc: OSError) -> Exception:
    """A failed write as one clear message: exit 3 for a full disk, 2 for an unusable place."""
    import errno

    from ..errors import EnvironmentProblem

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return EnvironmentProblem(
            f"Cannot write {target}: {reason}. Nothing was written; an earlier file there is "
            "unchanged.",
            hint="Free some disk space (or pick another --out) and run the command again.",
        )
    return BadInput(
        f"Cannot write {target}: {reason}. Nothing was written.",
        hint="Choose a writable folder with --out.",
    )


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def full_check(path: Path) -> None:
    """onnx.checker with the full check (type and shape inference), as a CheckFailed."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CheckFailed(
            f"onnx.checker rejected the exported model: {str(exc)[:400]}",
            hint="Try --exporter torchscript or another --opset; nothing was written.",
        ) from None
