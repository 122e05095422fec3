"""Reading and writing ONNX files: clear errors for bad files, atomic writes with external data."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BadInput, CheckFailed


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
    return require_utf8(path)


def require_utf8(path: Path) -> Path:
    """onnx and onnxruntime take paths as UTF-8 text (C++ std::string): refuse a name that is not
    UTF-8 with a clear message instead of their "incompatible function arguments"."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        from ..text import printable

        raise BadInput(
            f"{printable(str(path))}: onnx and onnxruntime cannot open a path whose name is not "
            "valid UTF-8.",
            hint="Rename the file or folder, or choose another place (e.g. --out exports/m.onnx).",
        ) from None
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
    """Write model (+ its external data) into a temp folder, check it there, then move into place.

    Crash-consistent: the data goes under a new content-hashed name (NAME.onnx.<sha>.data) that
    only the new model points to, the model is renamed in last (the one atomic switch), and only
    then is the previous export's data removed. A kill at any point leaves the old pair or the new
    pair, never an old model reading new weights.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        tmp = tmpdir / target.name
        data = _write_to(model, tmp, external_data)
        if check:
            check(tmp)
        mode = 0o666 & ~_umask()  # the data file gets the model's (ordinary) permissions
        written = [target]
        if data is not None:
            os.chmod(data, mode)
            _fsync(data)
            os.replace(data, target.parent / data.name)  # a new name: the old pair is untouched
            written.append(target.parent / data.name)
        os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, target)  # the switch: from here on the new pair is the export
        _fsync_dir(target.parent)
        _remove_stale_data(target, keep=written[1].name if data is not None else None)
        return written
    except OSError as exc:  # disk full, folder not writable: the previous export is untouched
        raise write_error(target, exc) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _write_to(model: Any, tmp: Path, external_data: bool) -> Path | None:
    """Save into the temp folder; with external data, rename the data to its content hash."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    placeholder = tmp.name + ".tmp.data"
    onnx.save_model(model, str(tmp), save_as_external_data=external_data,
                    all_tensors_to_one_file=True, location=placeholder, size_threshold=1024)  # fmt: skip
    first = tmp.parent / placeholder
    if not external_data or not first.exists():
        return None
    digest = _sha256(first)[:16]
    final = tmp.parent / f"{tmp.name}.{digest}.data"
    os.replace(first, final)
    # point the (small) model file at the new name; offsets and lengths stay as written
    proto = onnx.load(str(tmp), load_external_data=False)
    for tensor in _get_all_tensors(proto):
        if ExternalDataInfo(tensor).location == placeholder:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = final.name
    onnx.save_model(proto, str(tmp))
    return final


def data_files(model_path: Path) -> list[Path]:
    """The external data files an ONNX file points to (none for a single-file model)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # unreadable or half-written: it references nothing we can trust
        return []
    names = {
        ExternalDataInfo(t).location
        for t in _get_all_tensors(proto)
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    return [model_path.parent / n for n in sorted(names)]


def _remove_stale_data(target: Path, keep: str | None) -> None:
    """After the switch: remove data files of earlier exports of this name (ours only)."""
    for path in target.parent.glob(f"{glob.escape(target.name)}*.data"):
        rest = path.name[len(target.name) :]
        ours = rest == ".data" or re.fullmatch(r"\.[0-9a-f]{16}\.data", rest)
        if ours and path.name != keep:
            path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the renames still happened
        pass
    finally:
        os.close(fd)


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
