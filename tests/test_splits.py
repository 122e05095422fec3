"""Stratified, reproducible splits."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.data.splits import make_split, subsample
from dlpipe.errors import BadInput


def test_stratified_and_partitioning():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    s = make_split(labels, 0.1, 0.2, seed=3)
    everything = np.concatenate([s.train, s.val, s.test])
    assert sorted(everything.tolist()) == list(range(len(labels)))
    for part, frac in ((s.val, 0.1), (s.test, 0.2)):
        counts = np.bincount(labels[part], minlength=4)
        assert np.allclose(counts, np.array([100, 50, 30, 20]) * frac, atol=1)


def test_reproducible_by_seed_and_different_across_seeds():
    labels = np.repeat(np.arange(3), 40)
    a, b, c = make_split(labels, seed=1), make_split(labels, seed=1), make_split(labels, seed=2)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.val, c.val)


def test_small_classes_keep_training_data():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    s = make_split(labels, 0.3, 0.3, seed=0)
    assert (labels[s.train] == 0).any()


def test_official_test_split_is_respected():
    labels = np.repeat(np.arange(2), 50)
    official = np.zeros(100, dtype=bool)
    official[::5] = True
    s = make_split(labels, 0.1, 0.5, seed=0, official_test=official)
    assert np.array_equal(s.test, np.flatnonzero(official))
    assert not set(s.val) & set(s.test)


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (0.6, 0.5), (1.0, 0.0)])
def test_bad_fractions(val, test):
    with pytest.raises(BadInput):
        make_split(np.zeros(10), val, test)


def test_subsample_is_stratified():
    labels = np.repeat(np.arange(5), 100)
    keep = subsample(labels, np.arange(500), 100, seed=0)
    assert len(keep) == 100 and np.bincount(labels[keep]).tolist() == [20] * 5
