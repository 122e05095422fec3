"""Open a data source by name or path: built-in set, ImageFolder tree, or flat folder of images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInput
from .builtin import BUILTINS
from .decode import BadImage, decode, is_image_name

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
    paths: list[Path] | None = None
    official_test: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

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
        """(height, width) of the first image; built-ins are uniform."""
        img = self.image(0)
        return img.height, img.width

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


def _walk_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files below `folder` (following links, never looping), plus non-image files found."""
    images: list[Path] = []
    others: list[tuple[str, str]] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = Path(root) / f
            if is_image_name(p):
                images.append(p)
            else:
                others.append((str(p), "not an image file (extension)"))
    return images, others


def _check_files(
    paths: list[Path], mode_hint: str | None
) -> tuple[list[Path], list[tuple[str, str]], str]:
    """Decode every file once; keep the good ones and pick the common mode (RGB wins)."""
    good: list[Path] = []
    bad: list[tuple[str, str]] = []
    modes: set[str] = set()
    for p in paths:
        try:
            img = decode(p)
        except BadImage as exc:
            bad.append((str(p), str(exc)))
            continue
        modes.add(img.mode)
        good.append(p)
    mode = mode_hint or ("RGB" if "RGB" in modes else "L")
    return good, bad, mode


def _from_folder(path: Path, strict: bool) -> ImageDataset:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = []
    class_others: list[tuple[str, str]] = []
    for d in subdirs:
        imgs, others = _walk_images(d)
        class_dirs.append((d, imgs))
        class_others += others
    labeled = any(imgs for _, imgs in class_dirs)
    skipped: list[tuple[str, str]] = []
    files: list[Path] = []
    labels: list[int] = []
    if labeled:
        for index, (d, imgs) in enumerate(class_dirs):
            if not imgs:
                raise BadInput(
                    f"Class folder {d} has no images.",
                    hint="Remove the empty folder or add images to it (png, jpg, bmp, gif, tif, webp).",
                )
            files += imgs
            labels += [index] * len(imgs)
        class_names = [d.name for d, _ in class_dirs]
        skipped += class_others
        for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            skipped.append((str(f), "file beside the class folders (not in a class)"))
    else:
        files, others = _walk_images(path)
        skipped += others
        labels = [-1] * len(files)
        class_names = []
    good, bad, mode = _check_files(files, None)
    skipped += bad
    keep = {p: i for i, p in enumerate(files)}
    labels_arr = np.array([labels[keep[p]] for p in good], dtype=np.int64)
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
    if labeled:
        empty = [class_names[i] for i in range(len(class_names)) if not np.any(labels_arr == i)]
        if empty:
            raise BadInput(
                f"Class folder(s) {', '.join(empty)} in {path} have no readable images.",
                hint="See the skipped files listed above, or remove the folder.",
            )
    digest = hashlib.sha256()
    for p, y in zip(good, labels_arr, strict=True):
        st = p.stat()
        digest.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
    return ImageDataset(
        name=str(path),
        kind="imagefolder" if labeled else "flat",
        labels=labels_arr,
        class_names=class_names,
        mode=mode,
        fingerprint=f"dir:{digest.hexdigest()[:16]}",
        _get=lambda i: decode(good[i], mode),
        paths=good,
        skipped=skipped,
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
