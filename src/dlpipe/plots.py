"""PNG plots people would rather look at than read: training curves, confusion matrices, grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .text import printable


def _pyplot():  # noqa: ANN202 - the matplotlib module
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    rows: Sequence[dict[str, object]],
    panels: dict[str, Sequence[str]],
    out: str | Path,
    x: str = "epoch",
) -> Path:
    """One panel per title, each plotting the named metrics.csv columns against `x`; epochs get
    integer ticks, and a change of the `stage` column (a staged fine-tune unfreezing) is marked."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    changes = _stage_changes(rows, x)
    for ax, (title, columns) in zip(axes[0], panels.items(), strict=True):
        for col in columns:
            pts = [(float(r[x]), float(r[col])) for r in rows if r.get(col) not in (None, "")]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=col)
        for at, label in changes:  # between the last epoch of one stage and the first of the next
            ax.axvline(at - 0.5, color="grey", linestyle="--", linewidth=1, label=label)
        ax.set_title(title)
        ax.set_xlabel(x)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:  # e.g. fd/kid with --fd-every 0: say so instead of drawing empty axes
            ax.text(0.5, 0.5, "not measured in this run", transform=ax.transAxes, ha="center",
                    color="grey")  # fmt: skip
    fig.tight_layout()
    return _save(fig, out)


def _stage_changes(rows: Sequence[dict[str, object]], x: str) -> list[tuple[float, str]]:
    """(x of the first row of a new stage, 'frozen -> unfrozen') for each change of `stage`."""
    changes, prev = [], None
    for r in rows:
        stage = r.get("stage")
        if stage in (None, "") or r.get(x) in (None, ""):
            continue
        if prev is not None and stage != prev:
            changes.append((float(r[x]), f"{prev} -> {stage}"))  # type: ignore[arg-type]
        prev = stage
    return changes


# Above this many classes the matrix is not drawn: its labels would be unreadable, and a figure
# sized per class grows quadratically (1,000 classes asked matplotlib for ~2.5 Gpx). The full
# matrix stays in the JSON; the PNG shows the largest confusions instead.
MAX_DRAWN_CLASSES = 40


def plot_confusion(
    matrix: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    title: str = "confusion matrix",
    accuracy: float | None = None,
) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts, colour bar and the
    accuracy in the title; above MAX_DRAWN_CLASSES classes, a table of the top confusions."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    total = int(matrix.sum())
    acc = accuracy if accuracy is not None else (np.trace(matrix) / total if total else None)
    title = printable(title).replace("$", r"\$")  # it may name a data folder: not math, not bytes
    heading = f"{title}\n" + (f"accuracy {acc:.2%} " if acc is not None else "") + f"(n={total})"
    if n > MAX_DRAWN_CLASSES:
        return _top_confusions(matrix, class_names, out, heading)
    plt = _pyplot()
    size = min(max(4.0, 0.45 * n + 2), 0.45 * MAX_DRAWN_CLASSES + 2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="images")
    labels = [_label(c) for c in class_names]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(heading, fontsize=10)
    if n <= 30:
        peak = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > peak / 2 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return _save(fig, out)


def top_confusions(
    matrix: np.ndarray, class_names: Sequence[str], k: int = 25
) -> list[dict[str, object]]:
    """The k largest off-diagonal cells: true class, predicted class, count, share of the true class."""
    m = np.asarray(matrix).copy()
    np.fill_diagonal(m, 0)
    flat = np.argsort(-m, axis=None, kind="stable")[:k]
    rows = []
    for i, j in zip(*np.unravel_index(flat, m.shape), strict=True):
        if m[i, j] <= 0:
            break
        support = int(np.asarray(matrix)[i].sum())
        rows.append({"true": class_names[i], "predicted": class_names[j], "count": int(m[i, j]),
                     "share_of_true": float(m[i, j] / support) if support else None})  # fmt: skip
    return rows


def _top_confusions(
    matrix: np.ndarray, class_names: Sequence[str], out: str | Path, heading: str
) -> Path:
    """A fixed-size table of the largest confusions (the many-class stand-in for the matrix)."""
    plt = _pyplot()
    rows = top_confusions(matrix, class_names)
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.28 * max(len(rows), 1)))
    ax.axis("off")
    heading += f"\n{len(class_names)} classes: too many to draw; the largest confusions (full matrix in the JSON)"
    ax.set_title(heading, fontsize=10)
    if rows:
        cells = [[_label(r["true"]), _label(r["predicted"]), str(r["count"]),
                  "" if r["share_of_true"] is None else f"{r['share_of_true']:.1%}"] for r in rows]  # fmt: skip
        table = ax.table(cells, colLabels=["true", "predicted as", "images", "of the true class"],
                         loc="upper center", cellLoc="left")  # fmt: skip
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    else:
        ax.text(0.5, 0.5, "no confusions: every image classified correctly", ha="center")
    fig.tight_layout()
    return _save(fig, out)


def _label(name: object, width: int = 24) -> str:
    """A class name as plain text: control characters shown as escapes, '$' not read as math, cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in printable(str(name)))
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$")


def image_grid(images: np.ndarray, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 (N, C, H, W) or (N, H, W) -> one uint8 (H', W', C) grid image."""
    if images.ndim == 3:
        images = images[:, None]
    n, c, h, w = images.shape
    ncol = min(nrow, n) or 1
    nrows = -(-n // ncol)
    grid = np.zeros((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = images[k].transpose(1, 2, 0)
    return grid


def save_png(array: np.ndarray, out: str | Path) -> Path:
    """Atomically save a uint8 (H, W) or (H, W, C) array as PNG."""
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(out)


def labeled_rows(
    rows: Sequence[np.ndarray], labels: Sequence[str], out: str | Path, min_width: int = 560
) -> Path:
    """Stack image rows (uint8 HxW or HxWxC grids), each labelled on its left, upscaled by whole
    pixels (nearest) so that small images stay visible and the labels are readable."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [r if r.ndim == 3 else r[:, :, None] for r in rows]
    channels = max(r.shape[2] for r in rows)
    rows = [np.repeat(r, 3, axis=2) if r.shape[2] < channels else r for r in rows]
    width = max(r.shape[1] for r in rows)
    scale = int(min(8, max(1, -(-min_width // width))))
    try:
        font: object = ImageFont.load_default(size=16)
    except TypeError:  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 12 + max(int(probe.textlength(str(t), font=font)) for t in labels)  # type: ignore[arg-type]
    blocks = []
    for r, text in zip(rows, labels, strict=True):
        big = np.repeat(np.repeat(r, scale, axis=0), scale, axis=1)
        big = np.pad(
            big, [(0, 0), (margin, width * scale - big.shape[1]), (0, 0)], constant_values=255
        )
        img = Image.fromarray(big[:, :, 0] if channels == 1 else big)
        draw = ImageDraw.Draw(img)
        top, bottom = draw.textbbox((0, 0), str(text), font=font)[1::2]  # type: ignore[arg-type]
        y = (big.shape[0] - top - bottom) // 2  # the text centred on the row
        draw.text((6, y), str(text), fill=0 if channels == 1 else (0, 0, 0), font=font)  # type: ignore[arg-type]
        blocks.append(np.asarray(img))
    return save_png(np.concatenate(blocks).astype(np.uint8), out)


def _save(fig: object, out: str | Path) -> Path:
    plt = _pyplot()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # type: ignore[attr-defined]
    plt.close(fig)
    return Path(out)
