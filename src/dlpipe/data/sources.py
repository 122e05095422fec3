"""Open a data source by name or path: built-in set, ImageFolder tree, or flat folder of images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..text import printable
from .builtin import BUILTINS
from .decode import BadImage, decode, is_image_name
from .index import Candidate, Header, dedupe, headers, walk

# How many skipped files a strict error lists before "and N more".
_SHOW = 5


@dataclass
class ImageDataset:
    """A data set of images with labels (-1 when unlabeled), in its native mode ('L' or 'RGB')."""

    name: str
    kind: str  # "builtin" | "imagefolder" | "flat"
    labels: np.ndarray
    class_names: list[str]
    mode: str
    fingerprint: str
    _get: Callable[[int], Image.Image]
    paths: Sequence[Path] | None = None
    official_test: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    strict: bool = False
    _dims: tuple[int, int] | None = None  # (height, width) of image 0 from its header

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        """The decoded image at `index` (PIL, native mode)."""
        return self._get(int(index))

    @property
    def labeled(self) -> bool:
        return bool(self.class_names)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the first image (from its header for folders); built-ins are uniform."""
        if self._dims is not None:
            return self._dims
        img = self.image(0)
        return img.height, img.width

    def where(self, index: int) -> str:
        """The file (or built-in row) an index stands for, for messages and skipped.txt."""
        return str(self.paths[index]) if self.paths is not None else f"{self.name}[{index}]"

    def note_bad(self, found: list[tuple[int, str]]) -> None:
        """Images found unusable when decoded: listed with the skipped files (fatal under
        --strict). A set where most of them fail is stopped by the decoder (arrays.Tally)."""
        if not found:
            return
        fresh = [(self.where(i), why) for i, why in found]
        known = {f for f, _ in self.skipped}
        self.skipped += [(f, why) for f, why in fresh if f not in known]
        if self.strict:
            listed = "; ".join(f"{f}: {why}" for f, why in fresh[:_SHOW])
            more = f" and {len(fresh) - _SHOW} more" if len(fresh) > _SHOW else ""
            raise BadInput(
                f"--strict: {len(fresh)} image(s) in {self.name} could not be decoded: "
                f"{listed}{more}.",
                hint="Fix or remove them, or drop --strict to skip them with a report.",
            )

    def require_classes(self, minimum: int = 2) -> None:
        """Fail clearly unless the set is labeled with at least `minimum` classes."""
        if len(self.class_names) < minimum:
            found = f"{len(self.class_names)} class" + ("es" if len(self.class_names) != 1 else "")
            raise BadInput(
                f"Data source {self.name!r} has {found}; this command needs at least {minimum}.",
                hint="Give a folder with one subfolder per class (ImageFolder layout), "
                "e.g. data/cat/*.jpg and data/dog/*.jpg, or a built-in set such as mnist5k.",
            )

    def summary(self) -> str:
        """One line for the console."""
        kinds = f"{len(self.class_names)} classes" if self.labeled else "unlabeled"
        skipped = f", {len(self.skipped)} files skipped" if self.skipped else ""
        return f"{self.name}: {len(self)} images, {kinds}, mode {self.mode}{skipped}"


def _from_builtin(name: str, data_root: Path | None) -> ImageDataset:
    arrays = BUILTINS[name].load(data_root)
    images = arrays.images
    mode = "L" if images.ndim == 3 else "RGB"
    digest = hashlib.sha256(images.tobytes() + arrays.labels.tobytes()).hexdigest()[:16]
    return ImageDataset(
        name=name,
        kind="builtin",
        labels=arrays.labels,
        class_names=list(arrays.class_names),
        mode=mode,
        fingerprint=f"{name}:{digest}",
        _get=lambda i: Image.fromarray(images[i], mode=mode),
        official_test=arrays.official_test,
    )


class PathList(Sequence[Path]):
    """A folder's file paths kept as text and made `Path`s when asked: building 100,000 Path
    objects up front was a third of opening a 100,000-file folder."""

    def __init__(self, text: list[str]) -> None:
        self._text = text

    def __len__(self) -> int:
        return len(self._text)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [Path(t) for t in self._text[i]]
        return Path(self._text[i])


def _lazy_get(
    paths: Sequence[Path], heads: list[Header], mode: str
) -> Callable[[int], Image.Image]:
    """Decode image i on demand; a file that vanished or changed since the index was read is a
    BadImage (skipped and listed like any bad file), not a traceback or a silent new image."""

    def get(i: int) -> Image.Image:
        p, h = paths[i], heads[i]
        try:
            st = p.stat()
        except OSError:
            raise BadImage("vanished since the data set was opened") from None
        if (st.st_size, st.st_mtime_ns) != (h.size, h.mtime_ns):
            raise BadImage("changed since the data set was opened")
        return decode(p, mode)

    return get


def _classes(path: Path, files: list[Candidate]) -> tuple[list[str], list[tuple[str, str]]]:
    """Class folders (top-level folders holding at least one candidate), and loose files beside."""
    beside = [(c.path, "file beside the class folders (not in a class)") for c in files
              if c.top is None]  # fmt: skip
    tops = sorted({c.top for c in files if c.top is not None})
    return tops, beside


def _class_names(path: Path, folders: list[str]) -> list[str]:
    """A class name per folder, as text: a folder name that is not UTF-8 (b"cl\\xffass") becomes
    `cl\\xffass`, so checkpoints, ONNX metadata, JSON and plots carry valid text."""
    names = [printable(f) for f in folders]
    if len(set(names)) < len(names):
        same = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(
            f"Class folders in {path} give the same class name twice: {', '.join(same)} (one "
            "folder name is not UTF-8 and reads like the other).",
            hint="Rename one of the folders.",
        )
    return names


def _from_folder(path: Path, strict: bool) -> ImageDataset:
    found, skipped = walk(path)
    found, twice = dedupe(found, path)
    skipped += twice
    is_image = [is_image_name(c.path) for c in found]
    names = [c for c, ok in zip(found, is_image, strict=True) if ok]
    skipped += [(c.path, "not an image file (extension)") for c, ok in
                zip(found, is_image, strict=True) if not ok]  # fmt: skip
    folders, beside = _classes(path, names)
    class_names = _class_names(path, folders)
    labeled = bool(class_names)
    if labeled:
        _check_class_folders(path, folders, skipped)
        skipped += beside
        names = [c for c in names if c.top is not None]
    heads, _stats = headers([c.path for c in names], path)
    good = [(c, h) for c, h in zip(names, heads, strict=True) if not h.bad]
    skipped += [(c.path, h.bad) for c, h in zip(names, heads, strict=True) if h.bad]
    index = {n: k for k, n in enumerate(folders)}
    labels_arr = np.array([index[c.top] if labeled else -1 for c, _ in good], dtype=np.int64)
    _refuse(path, strict, skipped, len(good))
    if labeled:
        empty = [class_names[i] for i in range(len(class_names)) if not np.any(labels_arr == i)]
        if empty:
            raise BadInput(
                f"Class folder(s) {', '.join(empty)} in {path} have no readable images.",
                hint="See the skipped files listed above, or remove the folder.",
            )
    digest = hashlib.sha256()
    start = len(os.fspath(path).rstrip(os.sep)) + 1
    for (c, h), y in zip(good, labels_arr, strict=True):
        digest.update(f"{printable(c.path[start:])}|{h.size}|{h.mtime_ns}|{y}\n".encode())
    files = PathList([c.path for c, _ in good])
    heads_ok = [h for _, h in good]
    mode = "RGB" if any(h.mode == "RGB" for h in heads_ok) else "L"
    return ImageDataset(
        name=str(path),
        kind="imagefolder" if labeled else "flat",
        labels=labels_arr,
        class_names=class_names,
        mode=mode,
        fingerprint=f"dir:{digest.hexdigest()[:16]}",
        _get=_lazy_get(files, heads_ok, mode),
        paths=files,
        skipped=skipped,
        strict=strict,
        _dims=(heads_ok[0].height, heads_ok[0].width),
    )


def _check_class_folders(path: Path, class_names: list[str], twice: list) -> None:
    """Every top-level folder must hold images of its own (not only links to another class)."""
    subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in subdirs:
        if name in class_names:
            continue
        dropped = [why for f, why in twice if Path(f).relative_to(path).parts[0] == name]
        if dropped and "counted once" not in dropped[0]:
            raise BadInput(
                f"Class folder {path / name} has no usable images: {dropped[0]}.",
                hint="Put the images themselves in the folder, or remove it.",
            )
        dup = dropped
        if dup:
            raise BadInput(
                f"Class folder {path / name} has no images of its own: its {len(dup)} file(s) "
                "are the same files as in another class (a symlink?), which would give one "
                "image two labels.",
                hint="Remove the link, or copy the images if they really belong to both classes.",
            )
        raise BadInput(
            f"Class folder {path / name} has no images.",
            hint="Remove the empty folder or add images to it (png, jpg, bmp, gif, tif, webp).",
        )


def _refuse(path: Path, strict: bool, skipped: list[tuple[str, str]], good: int) -> None:
    """--strict makes any skipped file fatal; no usable image at all is always fatal."""
    if strict and skipped:
        listed = "; ".join(f"{f}: {why}" for f, why in skipped[:_SHOW])
        more = f" and {len(skipped) - _SHOW} more" if len(skipped) > _SHOW else ""
        raise BadInput(
            f"--strict: {len(skipped)} unusable file(s) in {path}: {listed}{more}.",
            hint="Fix or remove them, or drop --strict to skip them with a report.",
        )
    if not good:
        raise BadInput(
            f"No readable images in {path} ({len(skipped)} file(s) skipped).",
            hint="Put images (png, jpg, bmp, gif, tif, webp) in class subfolders or directly in the folder.",
        )


def open_source(
    spec: str | Path, data_root: str | Path | None = None, strict: bool = False
) -> ImageDataset:
    """Open a built-in set by name or a folder by path, with clear errors for anything unusable."""
    text = str(spec)
    if text in BUILTINS:
        return _from_builtin(text, Path(data_root) if data_root else None)
    path = Path(text).expanduser()
    names = ", ".join(BUILTINS)
    if not path.exists():
        raise BadInput(
            f"Data source {text!r} is neither a built-in set nor an existing path.",
            hint=f"Pass a folder of images (class subfolders for labels) or one of: {names} "
            "(see `dlpipe data list`).",
        )
    if not path.is_dir():
        raise BadInput(
            f"Data source {path} is a file, not a folder.",
            hint="Pass the folder that holds the images (class subfolders for labels), "
            f"or a built-in set: {names}.",
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise BadInput(
            f"Data folder {path} is not readable (permission denied).",
            hint="Check its permissions.",
        )
    return _from_folder(path, strict)
