"""`dlpipe finetune` end to end on tiny real data: freeze semantics, cache, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlpipe.checkpoint import load_checkpoint
from dlpipe.cli.common import Output
from dlpipe.config import FinetuneConfig
from dlpipe.errors import BadInput
from dlpipe.runs import RunDir, create_run_dir
from dlpipe.train.classifier import run_finetune
from tests.conftest import parse_json

# Tiny and fast: the seed's CNN with BatchNorm on 8x8 digits, a few hundred images. --freeze makes
# the random backbone frozen on purpose (from scratch it would train whole): the cached-feature path.
TINY = dict(backbone="mnist_cnn_bn", weights="none", freeze=True, data="digits", limit=120, eval_limit=40,
            epochs=2, batch_size=32, device="cpu")  # fmt: skip
ARGS = ["--backbone", "mnist_cnn_bn", "--weights", "none", "--freeze", "--data", "digits",
        "--limit", "120", "--eval-limit", "40", "--batch-size", "32", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DLPIPE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLPIPE_CACHE_DIR", str(tmp_path / "cache"))


def _session(**kw: object):  # noqa: ANN202
    from dlpipe.train.classifier.session import Session

    return Session.start(FinetuneConfig(**{**TINY, **kw}), create_run_dir("finetune"),
                         Output(quiet=True), False)  # fmt: skip


@pytest.mark.parametrize("augment", [False, True], ids=["cached", "augmented"])
def test_frozen_run_keeps_backbone_and_bn_stats(augment: bool) -> None:
    from dlpipe.train.classifier.stages import train_all

    s = _session(augment=augment)
    before = {k: v.clone() for k, v in s.model.body.state_dict().items()}
    held = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in s.model.head.parameters()}  # only trainable params
    assert all(not p.requires_grad for p in s.model.body.parameters())
    train_all(s)
    after = s.model.body.state_dict()
    assert any("running_mean" in k for k in before)
    for k, v in before.items():  # weights AND BatchNorm running statistics unchanged
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, msg=k)


def test_train_bn_lets_statistics_move() -> None:
    from dlpipe.train.classifier.stages import train_all

    s = _session(train_bn=True, epochs=1)
    before = s.model.body.features[1].running_mean.clone()
    held = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in s.model.parameters() if p.requires_grad}
    train_all(s)
    assert not torch.equal(before, s.model.body.features[1].running_mean)


def test_feature_cache_hit_miss_and_invalidation(tmp_path: Path) -> None:
    import numpy as np

    from dlpipe.data import Preprocess, open_source
    from dlpipe.models.backbones import build_classifier
    from dlpipe.train.classifier import features as fc

    ds = open_source("digits")
    idx = np.arange(40)
    model, _ = build_classifier("mnist_cnn_bn", 10, in_chans=1)
    body, pre, cpu = model.body, Preprocess(), torch.device("cpu")

    def get(body=body, pre=pre, idx=idx):  # noqa: ANN001, ANN202
        fc._MEMORY.clear()  # look at the disk cache
        return fc.cached_features(body, fc.module_hash(body), ds, idx, pre, "train", cpu)

    f1, y1, how = get()
    assert (
        how == "computed"
        and f1.shape == (40, 128)
        and torch.equal(y1, torch.from_numpy(ds.labels[:40]))
    )
    f2, _, how = get()
    assert how == "disk" and torch.equal(f1, f2)
    files = list(fc.cache_dir().glob("*.safetensors"))
    assert len(files) == 1 and str(tmp_path / "cache") in str(files[0])
    with torch.no_grad():  # other weights -> other features
        body.features[0].weight.add_(0.1)
    assert get()[2] == "computed"
    assert get(pre=Preprocess(resize=12))[2] == "computed"  # other preprocessing
    assert get(idx=np.arange(1, 41))[2] == "computed"  # other data
    assert get(pre=Preprocess(resize=12))[2] == "disk"
    path = files[0]  # corrupt a cached file: detected by its checksum, rebuilt
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with torch.no_grad():
        body.features[0].weight.sub_(0.1)
    f3, _, how = get()
    assert how == "computed"
    torch.testing.assert_close(f3, f1)
    assert get()[2] == "disk"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).weights["model"]


def test_staged_unfreeze_then_resume_equals_uninterrupted(cli) -> None:
    staged = [*ARGS, "--epochs", "3", "--unfreeze-after", "1", "--backbone-lr-mult", "0.5"]
    full = cli("finetune", *staged, "--name", "full", "--json", "-q")
    assert full.exit_code == 0, full.output
    part = cli("finetune", *staged, "--name", "cut", "--stop-after", "2", "-q")
    assert part.exit_code == 0, part.output
    ck = load_checkpoint("runs/finetune/cut/checkpoints/last.safetensors")
    assert ck.state["stage"] == "unfrozen" and ck.state["epoch"] == 2  # the stage is stored
    resumed = cli("finetune", "--resume", "--name", "cut", "--json", "-q")  # options from the run
    assert resumed.exit_code == 0, resumed.output
    a, b = _weights(Path("runs/finetune/full/checkpoints/last.safetensors")), _weights(
        Path("runs/finetune/cut/checkpoints/last.safetensors"))  # fmt: skip
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    ra, rb = parse_json(full.stdout), parse_json(resumed.stdout)
    assert ra["metrics"]["held_out_acc"] == rb["metrics"]["held_out_acc"]
    rows = RunDir(Path("runs/finetune/cut")).read_metrics()
    assert [r["stage"] for r in rows] == ["frozen", "unfrozen", "unfrozen"]


def test_unfreeze_keeps_bn_statistics_warms_backbone_and_smooths_labels() -> None:
    from dlpipe.train.classifier.stages import _plan, train_all

    s = _session(epochs=2, unfreeze_after=1)
    body = s.model.body
    before = {k: v.clone() for k, v in body.state_dict().items()}
    train_all(s)
    assert s.stage == "unfrozen" and s.keeps_bn
    after = body.state_dict()
    stats = [k for k in before if "running_" in k or "num_batches" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # statistics kept
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    plan = _plan(s, frozen=False, steps_per_epoch=4)  # 120 rows / batch 32
    f = [plan.factors(step) for step in range(4, 8)]  # the unfrozen epoch
    assert [b / h for h, b in f] == [0.0, 0.25, 0.5, 0.75]  # backbone lr rises from 0
    assert f[0][0] == 1.0  # the head's schedule restarts with the stage

    moved = _session(epochs=2, unfreeze_after=1, train_bn=True)
    mean = moved.model.body.features[1].running_mean.clone()
    train_all(moved)
    assert not torch.equal(mean, moved.model.body.features[1].running_mean)


def test_head_fit_auto_reports_what_it_chose(cli) -> None:
    res = cli("finetune", *ARGS, "--epochs", "5", "--unfreeze-after", "3", "--json")
    assert res.exit_code == 0, res.output
    m = parse_json(res.stdout)["metrics"]
    assert m["head_fit_method"] == "lbfgs" and m["head_weight_decay"] > 0
    assert "chosen on validation" in m["head_fit"]
    assert m["batchnorm_after_unfreeze"] == "kept its pretrained statistics"
    assert isinstance(m["unfreeze_helped"], bool) and "unfreez" in m["unfreeze"]
    rows = RunDir(Path(parse_json(res.stdout)["run_dir"])).read_metrics()
    assert [(r["epoch"], r["stage"], r["path"]) for r in rows] == [
        ("3", "frozen", "head-fit"), ("4", "unfrozen", "slow"), ("5", "unfrozen", "slow")]  # fmt: skip
    text = " ".join(res.stderr.split()) + " ".join(res.stdout.split())
    assert "Traceback" not in text
    best = load_checkpoint(Path(parse_json(res.stdout)["run_dir"]) / "checkpoints/best.safetensors")
    best_acc = max(float(r["val_acc"]) for r in rows)
    assert best.state["best"]["acc"] == best_acc  # the best-validation weights are kept
    mlp = cli("finetune", *ARGS, "--head", "mlp", "--hidden", "16", "--json", "-q")
    assert mlp.exit_code == 0, mlp.output
    m = parse_json(mlp.stdout)["metrics"]
    assert m["head_fit_method"] == "early-stopped" and "best at epoch" in m["head_fit"]


def test_json_reports_held_out_accuracy_and_artifacts(cli) -> None:
    res = cli("finetune", *ARGS, "--epochs", "2", "--head", "mlp", "--hidden", "16", "--json")
    assert res.exit_code == 0, res.output
    out = parse_json(res.stdout)
    m = out["metrics"]
    assert 0.0 <= m["held_out_acc"] <= 1.0 and m["held_out_split"] == "test"
    assert m["feature_cache"] == "computed" and len(m["per_class_acc"]) == 10
    for key in ("best", "last", "metrics_csv", "curves", "confusion"):
        assert Path(out["artifacts"][key]).is_file(), key
    meta = load_checkpoint(out["artifacts"]["best"]).meta
    assert meta["kind"] == "classifier" and meta["arch"]["head"] == "mlp"
    assert meta["metrics"]["held_out_acc"] == m["held_out_acc"]
    from dlpipe.models import build_from_meta

    build_from_meta(meta).load_state_dict(
        load_checkpoint(out["artifacts"]["best"]).weights["model"]
    )
    again = parse_json(cli("finetune", *ARGS, "--epochs", "1", "--json").stdout)
    assert again["metrics"]["feature_cache"] in ("disk", "memory")  # reused across runs


def test_from_scratch_bn_vs_no_bn_and_lbfgs(cli) -> None:
    for name in ("mnist_cnn", "mnist_cnn_bn"):
        args = [a if a != "mnist_cnn_bn" else name for a in ARGS]
        res = cli("finetune", *args, "--no-freeze", "--epochs", "1", "--json", "-q")
        assert res.exit_code == 0, res.output
        assert parse_json(res.stdout)["metrics"]["stage"] == "unfrozen"  # trained end to end
    res = cli("finetune", *ARGS, "--optimizer", "lbfgs", "--scheduler", "none", "--lr", "0.5",
              "--epochs", "1", "--json", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert parse_json(res.stdout)["metrics"]["last_train_acc"] > 0.2


def test_densenet121_from_scratch_on_an_image_folder(cli, image_folder: Path) -> None:
    res = cli("finetune", "--backbone", "densenet121", "--weights", "none", "--data",
              str(image_folder), "--epochs", "1", "--image-size", "32", "--json", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = parse_json(res.stdout)
    assert out["backbone"]["replaced"] == "classifier" and out["backbone"]["feature_size"] == 1024
    assert out["metrics"]["stage"] == "unfrozen"  # --weights none trains the whole network


def test_explicit_freeze_of_a_random_backbone_warns(cli) -> None:
    res = cli("finetune", *ARGS, "--epochs", "1", "--json")
    assert res.exit_code == 0, res.output
    assert "randomly initialised backbone" in " ".join(res.stderr.split())
    assert parse_json(res.stdout)["metrics"]["stage"] == "frozen"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backbone", "densenet12"], "densenet121"),
        (["--backbone", "densenet121", "--weights", "DEFAULT"], "densenet121-a639ec97.pth"),
        (["--optimizer", "lbfgs", "--scheduler", "cosine"], "lbfgs"),
        (["--optimizer", "lbfgs", "--scheduler", "none", "--unfreeze-after", "1"], "single"),
    ],
    ids=["unknown-backbone", "default-offline", "lbfgs-scheduler", "lbfgs-staged"],
)
def test_bad_input_exits_2(cli, extra: list[str], needle: str) -> None:
    args = list(ARGS)
    if "--backbone" in extra:
        i = args.index("--backbone")
        del args[i : i + 4]  # drop --backbone/--weights defaults of TINY
    res = cli("finetune", *args, *extra)
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()), res.output


def test_weights_of_another_architecture_exit_2(cli, tmp_path: Path) -> None:
    from dlpipe.models.backbones import build_classifier

    m, _ = build_classifier("mnist_cnn", 10, in_chans=1)
    torch.save({k[5:]: v for k, v in m.state_dict().items() if k.startswith("body.")},
               tmp_path / "w.pth")  # fmt: skip
    args = [a if a != "none" else str(tmp_path / "w.pth") for a in ARGS]
    res = cli("finetune", *args, "--epochs", "1")
    assert res.exit_code == 2 and "do not fit the mnist_cnn_bn" in " ".join(res.output.split())


def test_resume_with_another_head_and_nan_keeps_last_checkpoint(cli) -> None:
    assert cli("finetune", *ARGS, "--epochs", "3", "--name", "r", "--stop-after", "1",
               "--head-fit", "epochs", "-q").exit_code == 0  # fmt: skip
    res = cli("finetune", "--resume", "--name", "r", "--head", "mlp")
    assert res.exit_code == 2 and "head: checkpoint 'linear', now 'mlp'" in " ".join(
        res.output.split()
    )
    res = cli("finetune", "--resume", "--name", "r", "--optimizer", "sgd")
    assert res.exit_code == 2 and "--optimizer adamw" in res.output
    res = cli("finetune", "--resume", "--name", "r", "--lr", "1e30")
    assert res.exit_code == 1 and "at epoch 2, step" in " ".join(res.output.split())
    assert load_checkpoint("runs/finetune/r/checkpoints/last.safetensors").state["epoch"] == 1


def test_run_finetune_is_a_plain_stage(tmp_path: Path) -> None:
    result = run_finetune(FinetuneConfig(**{**TINY, "epochs": 1}), tmp_path / "stage")
    assert Path(result["artifacts"]["last"]).is_file()
    with pytest.raises(BadInput):
        run_finetune(FinetuneConfig(**{**TINY, "head": "tree"}), tmp_path / "bad")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(cli) -> None:
    args = [a if a != "cpu" else "cuda" for a in ARGS]
    res = cli("finetune", *args, "--epochs", "2", "--unfreeze-after", "1", "--json", "-q")
    assert res.exit_code == 0, res.output
