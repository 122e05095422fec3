"""`dlpipe eval`, stratified validation inputs and `predict --save-csv`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlpipe.data.splits import spread
from tests.conftest import parse_json
from tests.test_export_helpers import (  # noqa: F401
    tiny_builders,
    write_classifier_run,
    write_generator_run,
)
from tests.test_predict import _no_torch


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


def _export(cli, tmp_path, image_folder) -> Path:
    run = write_classifier_run(tmp_path, image_folder)
    assert cli("export", run, "--exporter", "torchscript", "--quiet").exit_code == 0
    return run


def _torch_accuracy(run: Path, files: list[Path], labels: list[int]) -> float:
    import torch

    from dlpipe.checkpoint import load_checkpoint
    from dlpipe.data import Preprocess
    from dlpipe.data.decode import decode
    from dlpipe.export.spec import build_exportable

    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    x = torch.from_numpy(Preprocess.from_dict(ckpt.meta["preprocess"]).batch(map(decode, files)))
    with torch.no_grad():
        pred = build_exportable(ckpt)(x).argmax(-1).numpy()
    return float(np.mean(pred == np.array(labels)))


@pytest.mark.usefixtures("tiny_builders")
def test_eval_onnx_without_torch_agrees_with_the_run_folder(cli, tmp_path, image_folder):
    run = _export(cli, tmp_path, image_folder)
    res = _no_torch("eval", "exports/tiny.onnx", "--data", image_folder, "--split", "all",
                    "--json", "--batch-size", "4")  # fmt: skip
    assert res["code"] == 0, res
    assert res["loaded"] == []  # the deployed path: neither torch nor onnx imported
    assert "trained on" in res["stderr"]  # --split all on the training data warns
    got = parse_json(res["stdout"])
    m = got["metrics"]
    files = sorted(image_folder.rglob("*.png"))
    truth = [["bird", "cat", "dog"].index(f.parent.name) for f in files]
    assert m["images"] == 18 and m["classes"] == 3
    assert m["accuracy"] == pytest.approx(_torch_accuracy(run, files, truth))
    full = json.loads(Path(got["artifacts"]["eval_json"]).read_text())
    cm = np.array(full["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == 18 and np.trace(cm) / 18 == m["accuracy"]
    assert m["per_class_acc"]["cat"] == cm[1, 1] / cm[1].sum()
    assert Image.open(got["artifacts"]["confusion_png"]).format == "PNG"
    assert Path(got["artifacts"]["eval_json"]).parent == Path("runs/eval/tiny")

    # the run folder (PyTorch) on its own held-out split (auto): same figures as the ONNX file
    torch_res = cli("eval", run, "--data", image_folder, "--json", "--device", "cpu")
    onnx_res = cli("eval", "exports/tiny.onnx", "--data", image_folder, "--json")
    a, b = parse_json(torch_res.stdout), parse_json(onnx_res.stdout)
    assert a["metrics"]["images"] == 6 and "held-out test split" in a["split"]
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    assert a["metrics"]["per_class_acc"] == b["metrics"]["per_class_acc"]
    assert a["artifacts"]["eval_json"] == "runs/eval/tiny2/eval.json"  # never overwritten
    assert b["artifacts"]["eval_json"] == "runs/eval/tiny3/eval.json"


@pytest.mark.usefixtures("tiny_builders")
def test_eval_matches_classes_by_name_and_refuses_what_it_cannot_score(cli, tmp_path, image_folder):
    _export(cli, tmp_path, image_folder)
    sub = tmp_path / "sub"  # only some of the model's classes, in another order on disk
    shutil.copytree(image_folder / "dog", sub / "dog")
    (sub / "aaa_cat").mkdir()  # ...and a class the model does not know
    shutil.copy(image_folder / "cat" / "0.png", sub / "aaa_cat" / "0.png")
    bad = cli("eval", "exports/tiny.onnx", "--data", sub)
    assert bad.exit_code == 2 and "aaa_cat is not a class of exports/tiny.onnx" in bad.stderr
    assert "bird, cat, dog" in bad.stderr and "Traceback" not in bad.stderr
    shutil.rmtree(sub / "aaa_cat")
    ok = cli("eval", "exports/tiny.onnx", "--data", sub, "--json", "--out", "ev")
    m = parse_json(ok.stdout)["metrics"]
    assert ok.exit_code == 0 and m["images"] == 6 and m["classes_in_data"] == 1
    assert m["per_class_acc"]["bird"] is None and m["per_class_images"]["dog"] == 6
    assert Path("ev/confusion.png").exists() and Path("ev/eval.json").exists()

    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(image_folder / "cat" / "1.png", flat / "x.png")
    res = cli("eval", "exports/tiny.onnx", "--data", flat)
    assert res.exit_code == 2 and "no labels" in res.stderr and "dlpipe predict" in res.stderr
    gen = write_generator_run(tmp_path)
    assert cli("export", gen, "--exporter", "torchscript", "-q", "--out", "g.onnx").exit_code == 0
    res = cli("eval", "g.onnx", "--data", image_folder)
    assert res.exit_code == 2 and "not a classifier" in res.stderr
    res = cli("eval", "exports/tiny.onnx", "--data", image_folder, "--split", "nope")
    assert res.exit_code == 2 and "--split 'nope'" in res.stderr


@pytest.mark.usefixtures("tiny_builders")
def test_predict_save_csv_one_row_per_file_without_torch(cli, tmp_path, image_folder):
    run = _export(cli, tmp_path, image_folder)
    odd = image_folder / "cat" / 'a,b "c".png'  # a name the CSV must quote
    shutil.copy(image_folder / "cat" / "0.png", odd)
    (image_folder / "notes.txt").write_text("not an image")
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = _no_torch("predict", "exports/tiny.onnx", image_folder, "--save-csv", "out/p.csv",
                    "--top-k", "2", "--batch-size", "4", "--json")  # fmt: skip
    assert res["code"] == 0, res
    assert res["loaded"] == []
    payload = parse_json(res["stdout"])
    assert payload["csv"] == "out/p.csv"
    with open("out/p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "top1_class", "top1_probability", "top2_class",
                             "top2_probability", "error"]  # fmt: skip
    good = [r for r in rows if not r["error"]]
    assert len(good) == 19 == len(payload["predictions"])  # 18 images + the copy
    assert {r["path"] for r in rows if r["error"]} == {
        str(image_folder / "notes.txt"), str(image_folder / "dog" / "broken.png")}  # fmt: skip
    assert str(odd) in {r["path"] for r in good}
    for r, p in zip(good, payload["predictions"], strict=True):
        assert r["path"] == p["file"] and r["top1_class"] == p["top"][0]["class"]
        assert float(r["top1_probability"]) == pytest.approx(p["top"][0]["probability"], 1e-5)
        assert float(r["top1_probability"]) >= float(r["top2_probability"])
    assert not list(Path("out").glob(".*tmp"))  # written atomically: no temporary left

    # a file exported with a static batch of 1 still takes --batch-size 4 (chunked)
    assert cli("export", run, "--exporter", "torchscript", "--static-batch", "-q", "--out",
               "s.onnx").exit_code == 0  # fmt: skip
    static = cli("predict", "s.onnx", image_folder / "cat", "-b", "4", "--json", "-k", "1")
    assert static.exit_code == 0, static.output
    top = [p["top"][0]["probability"] for p in parse_json(static.stdout)["predictions"]]
    want = [p["top"][0]["probability"] for p in payload["predictions"] if "/cat/" in p["file"]]
    assert top == pytest.approx(want, abs=1e-5)
    bad = cli("predict", "exports/tiny.onnx", image_folder, "--save-csv", "out")
    assert bad.exit_code == 2 and "--save-csv out is a folder" in bad.stderr
