"""Fuzz the CLI surface: whatever a user (or an attacker) passes, dlpipe answers with a documented
exit code (0, 1, 2, 3, or 70 for a bug, whose traceback goes to crash.log) and never prints a
Python traceback. Small, fixed budget (derandomized: the same examples every run, < 60 s).

Option values come from the extreme ends of their types; files are random bytes, or real
formats (safetensors, ONNX, YAML, JSON) with random content where it matters.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ALLOWED = {0, 1, 2, 3, 70}  # 70: a bug, but told in one paragraph with its crash.log
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Numbers and text from the ends of their types (as a shell would pass them).
EXTREME_NUMBERS = st.sampled_from(
    ["0", "-0", "-1", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "9" * 30,
     str(2**63), str(-(2**63) - 1), "0x10", "1_000", " 7 ", "", "1e38"]
)  # fmt: skip
NASTY_TEXT = st.one_of(
    st.sampled_from(["", " ", "..", "/", "/dev/null", "../../etc", "[bold]x[/]", "\x1b[2J",
                     "a\nb", "-", "--data", "cuda:99", "💥", "a" * 300]),
    st.text(alphabet=string.printable + "\x00\x1b\u202e", max_size=40),
)  # fmt: skip
VALUE = st.one_of(EXTREME_NUMBERS, NASTY_TEXT)

# Commands that fail fast on a missing --data after parsing every other option.
TRAIN = {
    "ae train": ["--lr", "--batch-size", "--epochs", "--latent", "--width", "--image-size",
                 "--noise", "--limit", "--val-fraction", "--name", "--runs-dir", "--device",
                 "--amp", "--seed"],
    "gan train": ["--lr", "--batch-size", "--epochs", "--nz", "--ngf", "--image-size", "--name",
                  "--device", "--beta1", "--seed"],
    "finetune": ["--lr", "--batch-size", "--epochs", "--image-size", "--backbone", "--weights",
                 "--head", "--hidden", "--dropout", "--optimizer", "--scheduler", "--name",
                 "--label-smoothing", "--device"],
}  # fmt: skip


def _clean(res) -> None:  # noqa: ANN001 - a click Result
    text = res.output + (res.stderr or "")
    assert res.exit_code in ALLOWED, (res.exit_code, text[-2000:])
    assert "Traceback (most recent call last)" not in text, text[-2000:]


@FUZZ
@given(
    command=st.sampled_from(sorted(TRAIN)),
    picks=st.lists(st.tuples(st.integers(0, 13), VALUE), min_size=1, max_size=3),
)
def test_training_options_at_their_extremes(cli, command, picks) -> None:
    argv = command.split()
    for index, value in picks:
        options = TRAIN[command]
        argv += [options[index % len(options)], value]
    res = cli(*argv, "--data", "./no-such-data", "--quiet")
    _clean(res)
    assert res.exit_code != 0  # the data is missing: nothing may run


@FUZZ
@given(
    argv=st.sampled_from([
        ["gan", "sample", "F", "-n"], ["validate", "F", "--batch-sizes"], ["predict", "F", "x.png", "--top-k"],
        ["export", "F", "--opset"], ["export", "F", "--out"], ["predict", "F", "x.png", "--provider"],
        ["validate", "F", "--providers"], ["run", "F", "--set"], ["run", "F", "--only"],
    ]),
    value=VALUE,
)  # fmt: skip
def test_file_commands_with_extreme_option_values(cli, argv, value) -> None:
    Path("F").write_bytes(b"not a model")
    _clean(cli(*argv, value))


CHECKPOINT_KEYS = ["kind", "arch", "command", "export_group", "preprocess", "class_names", "io"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    meta=st.dictionaries(st.sampled_from(CHECKPOINT_KEYS), JSON, max_size=6),
    kind=st.sampled_from(["generator", "autoencoder", "classifier", "other"]),
    arch=st.dictionaries(
        st.sampled_from(
            ["nz", "ngf", "image_size", "channels", "latent", "width", "backbone", "num_classes"]
        ),
        st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=5), st.floats(), st.none()),
        max_size=6,
    ),  # fmt: skip
    command=st.sampled_from(
        [
            ["export", "c.safetensors", "--out", "c.onnx"],
            ["gan", "sample", "c.safetensors", "-n", "4"],
        ]
    ),  # fmt: skip
)
def test_checkpoints_with_hostile_headers(cli, meta, kind, arch, command) -> None:
    import torch
    from safetensors.torch import save_file

    meta = {**meta, "kind": kind, "arch": arch}
    header = {"dlpipe.format": "dlpipe-checkpoint/1", "dlpipe.meta": json.dumps(meta),
              "dlpipe.state": "{}", "dlpipe.groups": '["model"]'}  # fmt: skip
    save_file({"model/w": torch.zeros(2)}, "c.safetensors", metadata=header)
    _clean(cli(*command, "-q"))


@FUZZ
@given(
    data=st.binary(max_size=600),
    target=st.sampled_from([
        ("c.safetensors", ["export", "c.safetensors", "--out", "o.onnx", "-q"]),
        ("c.safetensors", ["gan", "sample", "c.safetensors", "-n", "2"]),
        ("m.onnx", ["inspect", "m.onnx"]),
        ("m.onnx", ["predict", "m.onnx", "x.png"]),
        ("m.onnx", ["validate", "m.onnx"]),
        ("p.yaml", ["run", "p.yaml", "--dry-run"]),
        ("runs/pipelines/p/state.json", ["run", "p.yaml", "--dry-run"]),
        ("c.safetensors", ["ae", "train", "--resume", "--name", "c", "-q"]),
    ]),
)  # fmt: skip
@example(data=b"\x80", target=("p.yaml", ["run", "p.yaml", "--dry-run"]))  # found by this fuzz
def test_random_bytes_as_files(cli, data, target) -> None:
    from PIL import Image

    name, argv = target
    Image.new("L", (8, 8), 7).save("x.png")
    if name.endswith("state.json"):
        Path("p.yaml").write_text(
            "name: p\nstages:\n  - name: a\n    command: data export\n    args: [digits, out]\n"
        )
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if argv[:2] == ["ae", "train"]:  # a "run" whose last checkpoint is the random file
        ck = Path("runs/ae/c/checkpoints")
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "last.safetensors").write_bytes(data)
    _clean(cli(*argv))


@FUZZ
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet=string.printable, max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["name", "stages", "command", "args", "runs_dir", "x", "limit", "description"]
                ),
                inner,
                max_size=4,
            )
        ),  # fmt: skip
        max_leaves=15,
    )
)
def test_pipeline_files_of_any_shape(cli, doc) -> None:
    Path("p.yaml").write_text(json.dumps(doc))  # JSON is YAML: any structure, any types
    _clean(cli("run", "p.yaml", "--dry-run"))


@pytest.mark.parametrize("argv", [["--help"], ["gan", "--help"], ["data", "list", "--json"]])
def test_help_and_listing_always_work(cli, argv) -> None:
    res = cli(*argv)
    assert res.exit_code == 0 and "Traceback" not in res.output
