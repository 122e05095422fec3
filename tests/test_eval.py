"""`dlpipe eval`, stratified validation inputs and `predict --save-csv`."""

from __future__ import annotations

import numpy as np

from dlpipe.data.splits import spread
from tests.test_export_helpers import tiny_builders, write_classifier_run  # noqa: F401


def test_spread_covers_every_class_of_a_class_sorted_set():
    labels = np.repeat(np.arange(10), 50)  # like mnist5k's held-out split: sorted by class
    first = labels[:64]
    assert len(np.unique(first)) == 2  # what validate used to take
    idx = spread(labels, 64)
    counts = np.bincount(labels[idx], minlength=10)
    assert len(idx) == 64 and counts.min() >= 6 and counts.max() <= 7
    assert np.all(np.diff(idx) > 0)
    assert len(np.unique(labels[spread(labels, 8)])) == 8  # fewer places than classes: all distinct
    flat = spread(np.full(100, -1), 5)  # unlabeled: spread over the whole array
    assert flat.tolist() == [0, 25, 50, 74, 99]
    assert spread(labels, 1000).tolist() == list(range(500))
    skewed = np.array([0] * 95 + [1] * 3 + [2] * 2)
    assert set(labels_ := skewed[spread(skewed, 10)]) == {0, 1, 2} and len(labels_) == 10


def test_validate_inputs_are_stratified_and_say_so(tmp_path, image_folder):
    from dlpipe.checkpoint import load_checkpoint
    from dlpipe.export.inputs import held_out

    run = write_classifier_run(tmp_path, image_folder)
    meta = load_checkpoint(run / "checkpoints" / "last.safetensors").meta
    pixels, labels, note = held_out(meta, 3)
    assert pixels.shape == (3, 3, 16, 16) and sorted(labels.tolist()) == [0, 1, 2]
    assert "3 of the 6 images in the test split" in note
    assert "1 per class (bird: 1, cat: 1, dog: 1)" in note
