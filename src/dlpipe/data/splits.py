"""Deterministic stratified train/val/test splits by seed and fraction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInput


@dataclass(frozen=True)
class Split:
    """Index arrays into a data set; each is sorted, and together they partition it."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """{'train': n, 'val': n, 'test': n}."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise BadInput(f"--{name}-fraction {value} is outside [0, 1).", hint="Use e.g. 0.1 or 0.2.")


def _stratified(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices class by class; returns one array per fraction plus the remainder first."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for k, frac in enumerate(fractions, start=1):
            # at least one held-out image per class when the class can spare it
            n = int(round(frac * len(idx)))
            if frac > 0 and n == 0 and len(idx) - start > 1:
                n = 1
            n = min(n, len(idx) - start - 1)
            parts[k].append(idx[start : start + max(n, 0)])
            start += max(n, 0)
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.array([], dtype=np.int64) for p in parts]


def make_split(
    labels: np.ndarray,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    official_test: np.ndarray | None = None,
) -> Split:
    """Stratified split; a publisher's official test set is used as-is when the source has one."""
    _check_fraction("val", val_fraction)
    _check_fraction("test", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise BadInput(
            f"--val-fraction {val_fraction} plus --test-fraction {test_fraction} leaves no training data.",
            hint="Keep their sum well below 1.",
        )
    labels = np.asarray(labels)
    if official_test is not None:
        pool = np.flatnonzero(~official_test)
        train, val = _stratified(labels[pool], [val_fraction], seed)
        return Split(pool[train], pool[val], np.flatnonzero(official_test))
    train, val, test = _stratified(labels, [val_fraction, test_fraction], seed)
    return Split(train, val, test)


def subsample(labels: np.ndarray, indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A stratified subset of `indices` with at most `limit` items (all when limit is None)."""
    if limit is None or limit >= len(indices):
        return indices
    keep, _ = _stratified(labels[indices], [1.0 - limit / len(indices)], seed)
    return indices[keep]


def spread(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n positions into `labels`, stratified by class (each class in proportion, every class
    once when n allows) and evenly spaced within each class; unlabeled (-1) data is one class, so
    the pick spans the whole array instead of its first n items. Sorted; all when n >= len."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(n * counts / counts.sum()).astype(np.int64)
    if n >= len(classes):
        quota = np.maximum(quota, 1)  # a class never disappears from the sample
    while quota.sum() > n:  # the floor of 1 can overshoot: take back from the largest quotas
        quota[np.argmax(quota)] -= 1
    share = n * counts / counts.sum() - quota  # largest remainders get the leftover places
    for k in np.argsort(-share, kind="stable")[: n - quota.sum()]:
        quota[k] += 1
    picked = []
    for cls, q in zip(classes, quota, strict=True):
        idx = np.flatnonzero(labels == cls)
        q = min(int(q), len(idx))
        picked.append(idx[np.linspace(0, len(idx) - 1, q).round().astype(np.int64)])
    return np.sort(np.concatenate(picked))


def held_out_missing(labels: np.ndarray, fractions: dict[str, float], need: int) -> str:
    """Why a split the user asked for came out empty, in words to act on: its fraction(s) are 0,
    or no class has the `need` images it takes to spare one (training keeps one per class).
    `fractions` names the options that decide it, e.g. {"val": 0.1, "test": 0.1}."""
    if not any(fractions.values()):
        names = " and ".join(f"--{k}-fraction" for k in fractions)
        return f"{names} {'is' if len(fractions) == 1 else 'are both'} 0"
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    largest = int(counts.max()) if len(counts) else 0
    who = (
        "every class has a single image"
        if largest == 1
        else (f"no class has more than {largest} images")
    )
    return (
        f"{who} ({len(labels)} in all), and a class needs {need} images to spare one for "
        "held-out scoring (training keeps at least one of each class)"
    )
