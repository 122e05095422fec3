"""Property-based tests: splits, preprocessing metadata, pipeline overrides, and a decoder fuzz."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dlpipe.data.decode import BadImage, decode
from dlpipe.data.preprocess import Preprocess
from dlpipe.data.splits import make_split

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    val=st.floats(0.0, 0.45),
    test=st.floats(0.0, 0.45),
    seed=st.integers(0, 2**31),
)
def test_split_partitions_deterministically(counts, val, test, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    a = make_split(labels, val, test, seed)
    b = make_split(labels, val, test, seed)
    assert all(
        np.array_equal(x, y)
        for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True)
    )
    together = np.concatenate([a.train, a.val, a.test])
    assert np.array_equal(np.sort(together), np.arange(len(labels)))  # a partition, no overlap
    assert set(np.unique(labels[a.train])) == set(
        range(len(counts))
    )  # every class keeps training data


@FAST
@given(
    resize=st.one_of(st.none(), st.integers(1, 64)),
    crop=st.one_of(st.none(), st.integers(1, 32)),
    channels=st.sampled_from([1, 3]),
    per_channel=st.booleans(),
    mean=st.lists(st.floats(-2, 2, allow_nan=False), min_size=3, max_size=3),
    interp=st.sampled_from(["nearest", "bilinear", "bicubic"]),
)
def test_preprocess_metadata_round_trip(resize, crop, channels, per_channel, mean, interp):
    mean = mean[:channels] if per_channel else mean[:1]
    if crop and resize and crop > resize:
        crop = resize
    p = Preprocess(
        resize=resize,
        crop=crop,
        mean=mean,
        std=[0.5] * len(mean),
        interpolation=interp,
        channels=channels,
    )
    # through JSON, as it travels in checkpoints and ONNX metadata
    q = Preprocess.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p
    img = Image.fromarray(
        np.arange(40 * 30 * 3, dtype=np.uint32).reshape(40, 30, 3).astype(np.uint8)
    )
    x, y = p.apply(img), q.apply(img)
    assert np.array_equal(x, y) and x.dtype == np.float32 and x.shape[0] == channels
    if p.output_size:
        assert x.shape[1:] == (p.output_size, p.output_size)


@FAST
@given(
    stage=st.sampled_from(["first", "second"]),
    value=st.integers(1, 100),
)
def test_set_override_lands_on_the_stage(tmp_path, stage, value):
    from dlpipe.pipeline import load_pipeline

    from .test_pipeline import TINY

    path = Path(tmp_path) / "p.yaml"
    path.write_text(TINY)
    pipeline = load_pipeline(path, [f"{stage}.limit={value}"])
    assert pipeline.stage(stage).options["limit"] == value
    other = "second" if stage == "first" else "first"
    assert pipeline.stage(other).options["limit"] in (20, 30)


def test_preprocess_rejects_mismatched_metadata():
    import pytest

    from dlpipe.errors import BadInput

    with pytest.raises(BadInput, match="2 values for 1 channel"):
        Preprocess(mean=[0.1, 0.2], channels=1)
    with pytest.raises(BadInput, match="contains 0"):
        Preprocess(std=[0.0])


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


_SEED_FILES = {"png": _png_bytes()}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, len(_SEED_FILES["png"])),
    flips=st.lists(
        st.tuples(st.integers(0, len(_SEED_FILES["png"]) - 1), st.integers(0, 255)), max_size=8
    ),
)
def test_decoder_fuzz_never_crashes(tmp_path, cut, flips):
    """Mutated and truncated PNGs either decode to a valid image or raise BadImage — nothing else."""
    data = bytearray(_SEED_FILES["png"][:cut])
    for pos, byte in flips:
        if pos < len(data):
            data[pos] = byte
    path = Path(tmp_path) / "f.png"
    path.write_bytes(bytes(data))
    try:
        img = decode(path)
    except BadImage:
        return
    assert img.mode in ("L", "RGB") and img.width > 0
