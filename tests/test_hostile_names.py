"""Names are data, sizes are checked, JSON is JSON: pipeline names, duplicate keys, state files,
skipped.txt rows, class names with markup or escapes, empty paths, absurd sizes, NaN."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import lock_held_elsewhere, parse_json

STAGE = """\
stages:
  - name: first
    command: data export
    args: [digits, out/first]
    limit: 20
    force: true
"""


def _said(res, *phrases: str) -> None:  # noqa: ANN001 - a click Result
    text = " ".join(res.output.split())
    assert "Traceback" not in text, text
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"


@pytest.mark.parametrize("name", ["../../../../somewhere/ESCAPED", "/tmp/abs", "a b", "[red]x"])
def test_a_pipeline_name_cannot_escape_runs(cli, name) -> None:
    Path("p.yaml").write_text(f"name: {json.dumps(name)}\n{STAGE}")
    res = cli("run", "p.yaml")
    assert res.exit_code == 2
    _said(res, "p.yaml:1: pipeline name", "may use letters, digits, '-' and '_' only")
    assert not Path("out").exists() and not Path("runs").exists()
    assert not list(Path("/tmp").glob("abs/state.json"))


def test_a_file_name_that_is_not_a_name_is_tidied(cli) -> None:
    Path("my pipeline.v2.yaml").write_text(STAGE)
    res = cli("run", "my pipeline.v2.yaml", "--json")
    assert res.exit_code == 0, res.output
    assert Path("runs/pipelines/my-pipeline-v2/state.json").is_file()


def test_duplicate_yaml_keys_are_refused(cli) -> None:
    Path("p.yaml").write_text(STAGE.replace("    limit: 20\n", "    limit: 20\n    limit: 5\n"))
    res = cli("run", "p.yaml")
    assert res.exit_code == 2
    _said(res, "p.yaml:6: key 'limit' is given twice (first on line 5)")


def test_a_python_tag_is_refused_with_its_line(cli) -> None:
    """Was exit 70 (ConstructorError): a tag the safe loader will not build is bad input."""
    Path("p.yaml").write_text(
        STAGE.replace("limit: 20", "limit: !!python/object/apply:os.system [ls]")
    )
    res = cli("run", "p.yaml", "--dry-run")
    assert res.exit_code == 2, res.output
    _said(res, "p.yaml:5: not a plain YAML value (could not determine a constructor for the tag")


def test_an_alias_bomb_stays_cheap() -> None:
    import time

    from dlpipe.errors import BadInput
    from dlpipe.pipeline import load_pipeline

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    Path("bomb.yaml").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    with pytest.raises(BadInput):
        load_pipeline("bomb.yaml")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "junk", [b"\x00\xff\xfe garbage", b'{"first": {"status": "ok"', b"[1, 2, 3]", b'{"first": 3}']
)
def test_junk_or_truncated_state_is_refused_not_treated_as_empty(cli, junk) -> None:
    Path("p.yaml").write_text(f"name: p\n{STAGE}")
    state = Path("runs/pipelines/p/state.json")
    state.parent.mkdir(parents=True)
    state.write_bytes(junk)
    res = cli("run", "p.yaml")
    assert res.exit_code == 2
    _said(res, f"{state} is not a pipeline state file", f"Delete {state}")
    assert not Path("out").exists()  # nothing re-ran
    assert state.read_bytes() == junk


def test_one_pipeline_runs_once_at_a_time(cli) -> None:
    Path("p.yaml").write_text(f"name: p\n{STAGE}")
    with lock_held_elsewhere("runs/pipelines/p") as pid:
        res = cli("run", "p.yaml")
        assert res.exit_code == 2
        _said(res, f"Pipeline state folder runs/pipelines/p is in use by process {pid}")
        assert not Path("out").exists()
    assert cli("run", "p.yaml").exit_code == 0  # the dead holder's lock is stale: taken over


def test_skipped_txt_rows_cannot_be_forged(tmp_path, capsys) -> None:
    from dlpipe.console import Output
    from dlpipe.runs import RunDir

    names = ["[bold red]one\x1b[2J.png", "evil.png\nforged.png\tcorrupt", 'quote".png', "a\tb.png"]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.report_skipped([(n, "corrupt") for n in names], Output())
    with open(run.path / "skipped.txt", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows == [["file", "reason"]] + [[n, "corrupt"] for n in names]
    err = " ".join(capsys.readouterr().err.split())
    assert "\x1b" not in err and "[bold red]one\\x1b[2J.png" in err
    assert "evil.png\\x0aforged.png\\x09corrupt" in err


def test_class_names_are_printed_as_typed(cli) -> None:
    """Markup in a class folder name is not applied, an escape sequence is shown, not sent."""
    rng = np.random.default_rng(0)
    names = ["[bold red]one", "two\x1b[2J"]
    for c, name in enumerate(names):
        (Path("d") / name).mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 60, (8, 8), dtype=np.uint8) + (150 if c else 0)
            Image.fromarray(arr.astype(np.uint8)).save(Path("d") / name / f"{i}.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cli("finetune", "--backbone", "mnist_cnn_bn", "--weights", "none", "--data", "d",
                  "--epochs", "1", "--image-size", "8", "--device", "cpu", "--name", "n")  # fmt: skip
    assert res.exit_code == 0, res.output
    leaked = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not leaked, leaked  # e.g. matplotlib's "Glyph 27 missing from font" chatter
    assert "\x1b[2J" not in res.output
    assert "two\\x1b[2J" in res.output and "[bold red]one" in res.output


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["ae", "train", "--data", ""], "Invalid value for '--data' / '-d': is empty"),
        (["ae", "train", "--runs-dir", ""], "Invalid value for '--runs-dir': is empty"),
        (["finetune", "--image-size", "100000"], "--image-size 100000: one batch of 64 images"),
        (["gan", "sample", "x", "-n", "100000000"], "-n 100000000: a grid of 100,000,000 samples"),
        (["validate", "m.onnx", "--batch-sizes", "1,1000000"],
         "--batch-sizes 1,1000000: a batch of 1,000,000 images"),
        (["ae", "train", "--lr", "1e38"], "--lr 1e+38 is outside its usable range (0, 1e+30]"),
        (["finetune", "--lr", "inf"], "--lr inf is outside its usable range"),
    ],
)  # fmt: skip
def test_empty_paths_and_absurd_sizes_are_refused_before_anything_runs(cli, argv, phrase) -> None:
    res = cli(*argv)
    assert res.exit_code == 2, res.output
    _said(res, phrase)
    if "image-size" in phrase or "-n " in phrase or "batch-sizes" in phrase:
        _said(res, "GiB of memory, but this machine has")
    assert not Path("runs").exists()


def test_nan_in_json_output_is_null(capsys) -> None:
    from dlpipe.console import Output

    Output(json_mode=True).result({"metrics": {"acc": float("nan"), "inf": float("inf"), "n": 3}})
    line = capsys.readouterr().out
    assert json.loads(line) == {"metrics": {"acc": None, "inf": None, "n": 3}}
    assert "NaN" not in line and "Infinity" not in line


def test_data_list_json_numbers_are_numbers(cli) -> None:
    rows = {r["name"]: r for r in parse_json(cli("data", "list", "--json").stdout)["datasets"]}
    assert rows["mnist5k"]["images"] == 5000 and rows["mnist5k"]["image_size"] == 28
    assert rows["digits"]["images"] == 1797 and rows["digits"]["channels"] == 1


def test_help_shows_defaults_and_no_bool_metavar(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    lines = cli("gan", "train", "--help").stdout.splitlines()
    image = next(ln for ln in lines if "--image-size" in ln)
    assert "Output side: 28, 32 or 64 [default: the data's]." in image
    flags = [ln for ln in lines if any(f in ln for f in ("--json", "--quiet", "--deterministic"))]
    assert len(flags) == 3 and not any("<bool>" in ln for ln in flags), flags


def test_progress_never_counts_negative(capsys) -> None:
    from dlpipe.console import Output

    with Output().progress("gan train", -710) as advance:
        advance(0)
    err = capsys.readouterr().err
    assert "-710" not in err and "0/0" in err


# --- file and folder names that are not UTF-8 (Linux names are bytes) --------------------------


def _strict_json(text: str) -> dict:
    """The one JSON line of a --json command, parsed strictly: no NaN/Infinity, no lone surrogate
    (`\\udcff` is legal to Python's parser but refused by others, RFC 8259 section 8.2)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "\\udc" not in lines[0], lines[0]
    return json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))


def _bytes_named_folder(root: bytes = b"d") -> bytes:
    """Classes b"caf\\xe9" (Latin-1), b"cl\\xffass" (no encoding) and "plain"; half the files are
    named b"im\\xe9N.png"; one undecodable file b"bad\\xfe.png" must be skipped and listed."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate([b"caf\xe9", b"cl\xffass", b"plain"]):
        os.makedirs(os.path.join(root, cls))
        for i in range(8):
            arr = (rng.integers(0, 60, (8, 8)) + 90 * c).astype(np.uint8)
            name = b"im\xe9%d.png" % i if i % 2 else b"%d.png" % i
            Image.fromarray(arr).save(os.fsdecode(os.path.join(root, cls, name)))
    with open(os.path.join(root, b"plain", b"bad\xfe.png"), "wb") as fh:
        fh.write(b"not an image")
    return root


FINETUNE = ["--backbone", "mnist_cnn_bn", "--weights", "none", "--epochs", "1", "--image-size",
            "8", "--device", "cpu"]  # fmt: skip


def test_names_that_are_not_utf8_train_export_and_predict(cli) -> None:
    """finetune, export and predict on a folder whose class and file names are not UTF-8: class
    names read `cl\\xffass`, skipped.txt and every JSON output are valid UTF-8 / strict JSON."""
    _bytes_named_folder()
    res = cli("finetune", *FINETUNE, "--data", "d", "--name", "n", "--json")
    assert res.exit_code == 0, res.output
    result = _strict_json(res.stdout)
    assert "bad\\xfe.png" in " ".join(res.stderr.split())  # the warning names it visibly
    skipped = Path("runs/finetune/n/skipped.txt").read_bytes().decode("utf-8")
    assert "d/plain/bad\\xfe.png\tnot an image" in skipped
    json.loads(Path("runs/finetune/n/metrics.json").read_text(encoding="utf-8"))
    assert result["metrics"]["held_out_size"] > 0
    res = cli("export", "runs/finetune/n", "--out", "m.onnx")
    assert res.exit_code == 0, res.output
    meta = json.loads(Path("m.json").read_text(encoding="utf-8"))
    assert meta["class_names"] == ["caf\\xe9", "cl\\xffass", "plain"]
    one = os.fsdecode(b"d/cl\xffass/im\xe91.png")
    res = cli("predict", "m.onnx", one, "d", "--json", "--save-csv", "p.csv")
    assert res.exit_code == 0, res.output
    got = _strict_json(res.stdout)
    assert got["predictions"][0]["file"] == "d/cl\\xffass/im\\xe91.png"
    assert {t["class"] for t in got["predictions"][0]["top"]} == {"caf\\xe9", "cl\\xffass", "plain"}
    assert got["skipped"] == [
        {"file": "d/plain/bad\\xfe.png", "reason": got["skipped"][0]["reason"]}
    ]
    assert "d/cl\\xffass/im\\xe91.png," in Path("p.csv").read_bytes().decode("utf-8")
    res = cli("predict", "m.onnx", one)  # human output on stdout: escapes, no encode error
    assert res.exit_code == 0, res.output
    _said(res, "d/cl\\xffass/im\\xe91.png:", "cl\\xffass")


def test_names_that_are_not_utf8_in_the_summary_table(cli) -> None:
    """The rich summary table (not a plain string) on stdout: data folder and classes shown."""
    _bytes_named_folder(b"r\xfeot")
    res = cli("finetune", *FINETUNE, "--data", os.fsdecode(b"r\xfeot"), "--name", "n")
    assert res.exit_code == 0, res.output
    _said(res, "finetune mnist_cnn_bn on r\\xfeot", "caf\\xe9", "cl\\xffass")
    assert "\\udc" not in res.output


def test_ae_and_gan_train_on_names_that_are_not_utf8(cli) -> None:
    _bytes_named_folder()
    for argv in (["ae", "train", "--latent", "4", "--width", "4"],
                 ["gan", "train", "--nz", "8", "--ngf", "4", "--ndf", "4", "--fd-every", "0"]):  # fmt: skip
        res = cli(*argv, "--data", "d", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                  "--name", "b", "--json")  # fmt: skip
        assert res.exit_code == 0, res.output
        _strict_json(res.stdout)
        run = Path("runs", argv[0], "b")
        assert "d/plain/bad\\xfe.png" in (run / "skipped.txt").read_text(encoding="utf-8")


def test_a_runs_dir_that_is_not_utf8_and_an_onnx_path_that_is_not(cli) -> None:
    """Checkpoints in a non-UTF-8 folder load (safetensors itself refuses such paths); onnx and
    onnxruntime take UTF-8 paths only, so --out there is a clear exit 2, not their TypeError."""
    _bytes_named_folder()
    runs = os.fsdecode(b"R\xff")
    res = cli("finetune", *FINETUNE, "--data", "d", "--runs-dir", runs, "--name", "n", "--quiet")
    assert res.exit_code == 0, res.output
    res = cli("export", f"{runs}/finetune/n", "--out", os.fsdecode(b"o\xff/m.onnx"))
    assert res.exit_code == 2, res.output
    _said(res, "o\\xff/m.onnx: onnx and onnxruntime cannot open a path whose name is not valid")
    assert not os.path.exists(b"o\xff/m.onnx")
    res = cli("export", f"{runs}/finetune/n", "--out", "m.onnx", "--json")
    assert res.exit_code == 0, res.output
    _strict_json(res.stdout)
    meta = json.loads(Path("m.json").read_text(encoding="utf-8"))  # portable: no lone surrogate
    assert meta["source"]["checkpoint"].endswith("R\\xff/finetune/n/checkpoints/best.safetensors")


def test_printable_shows_undecodable_bytes_as_escapes(capsys) -> None:
    from dlpipe.console import Output, json_safe
    from dlpipe.text import printable

    name = os.fsdecode(b"caf\xe9-\xff.png")
    assert printable(name) == "caf\\xe9-\\xff.png" and printable("café") == "café"
    assert printable("\ud800") == "\\ud800"  # a surrogate no file name decodes to
    assert json_safe({name: [Path(name)]}) == {"caf\\xe9-\\xff.png": ["caf\\xe9-\\xff.png"]}
    Output().print(name)
    Output().warn(name)
    captured = capsys.readouterr()
    assert "caf\\xe9-\\xff.png" in captured.out and "caf\\xe9-\\xff.png" in captured.err


# --- one image per class: nothing to hold out ----------------------------------------------------


def _one_per_class(n: int = 5) -> None:
    rng = np.random.default_rng(1)
    for c in range(n):
        Path(f"one/c{c}").mkdir(parents=True)
        arr = (rng.integers(0, 60, (8, 8)) + 40 * c).astype(np.uint8)
        Image.fromarray(arr).save(f"one/c{c}/0.png")


def test_one_image_per_class_says_why_there_is_no_held_out_score(cli) -> None:
    """Was: "held-out acc (val, n=0) nan" without a word, and NaN in --json. Now a warning with
    the reason and what to do, null in strict JSON, and no empty confusion matrix."""
    _one_per_class()
    res = cli("finetune", *FINETUNE, "--data", "one", "--name", "n", "--json")
    assert res.exit_code == 0, res.output
    m = _strict_json(res.stdout)["metrics"]
    assert m["held_out_size"] == 0 and m["held_out_acc"] is None and m["held_out_split"] is None
    assert m["best_val_acc"] is None and "last_val_acc" not in m  # they were training accuracy
    assert "every class has a single image" in m["held_out_note"]
    _said(res, "warning: no held-out images: every class has a single image (5 in all)",
          "a class needs 2 images to spare one", "measured on the training images",
          "dlpipe eval RUN --data OTHER_FOLDER")  # fmt: skip
    assert not Path("runs/finetune/n/confusion.png").exists()
    saved = json.loads(Path("runs/finetune/n/metrics.json").read_text(), parse_constant=pytest.fail)
    assert saved["held_out_acc"] is None
    res = cli("finetune", *FINETUNE, "--data", "one", "--name", "q", "--quiet")
    assert res.exit_code == 0, res.output
    _said(res, "no held-out accuracy (no held-out images); run folder runs/finetune/q")
    assert "nan" not in res.output


def test_one_image_per_class_in_ae_train_says_the_scores_will_be_missing(cli) -> None:
    _one_per_class()
    res = cli("ae", "train", "--latent", "4", "--width", "4", "--data", "one", "--epochs", "1",
              "--device", "cpu", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _strict_json(res.stdout)["metrics"]["heldout_images"] == 0
    _said(res, "no held-out images: every class has a single image", "needs 3 images",
          "(PSNR/SSIM of ae train, fd/kid of gan train) will be missing")  # fmt: skip


def test_held_out_missing_names_the_cause() -> None:
    from dlpipe.data.splits import held_out_missing

    labels = np.array([0, 0, 1, 1])
    both = {"val": 0.0, "test": 0.0}
    assert held_out_missing(labels, both, 2) == "--val-fraction and --test-fraction are both 0"
    assert held_out_missing(labels, {"test": 0.0}, 2) == "--test-fraction is 0"
    why = held_out_missing(labels, {"val": 0.1, "test": 0.1}, 3)
    assert why.startswith("no class has more than 2 images (4 in all), and a class needs 3")
