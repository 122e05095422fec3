"""`dlpipe run`: stages chain, skip when up to date, stop on failure and resume, explain bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlpipe.errors import BadInput
from dlpipe.pipeline import load_pipeline

from .conftest import parse_json

TINY = """\
name: tiny
runs_dir: runs
stages:
  - name: first
    command: data export
    args: [digits, out/first]
    limit: 20
    force: true
  - name: second
    command: data export
    args: [digits, "${first.out_dir}-copy"]
    limit: 30
    force: true
"""


def _write(text: str, name: str = "p.yaml") -> Path:
    path = Path(name)
    path.write_text(text)
    return path


def _statuses(result) -> dict[str, str]:
    return {row["stage"]: row["status"] for row in parse_json(result.stdout)["stages"]}


def test_chain_skip_and_rerun_of_changed_stage(cli):
    p = _write(TINY)
    first = cli("run", p, "--json", "--quiet")
    assert first.exit_code == 0, first.output
    assert _statuses(first) == {"first": "ok", "second": "ok"}
    # the second stage used the first stage's output folder in its own path
    assert len(list(Path("out/first-copy").rglob("*.png"))) == 30
    assert _statuses(cli("run", p, "--json", "--quiet")) == {
        "first": "skipped",
        "second": "skipped",
    }
    changed = cli("run", p, "--json", "--quiet", "--set", "second.limit=40")
    assert _statuses(changed) == {"first": "skipped", "second": "ok"}
    summary = json.loads(Path("runs/pipelines/tiny/summary.json").read_text())
    assert [r["status"] for r in summary["stages"]] == ["skipped", "ok"]


def test_missing_output_makes_a_stage_run_again(cli):
    import shutil

    p = _write(TINY)
    assert cli("run", p, "--quiet").exit_code == 0
    shutil.rmtree("out/first-copy")
    assert _statuses(cli("run", p, "--json", "--quiet")) == {"first": "skipped", "second": "ok"}


def test_failing_stage_stops_and_rerun_resumes(cli):
    p = _write(
        TINY.replace(
            "args: [digits, out/first]", "args: [digits, out/first]\n    data-root: /nonexistent"
        )
    )
    p = _write(
        TINY.replace(
            'args: [digits, "${first.out_dir}-copy"]', 'args: [nosuchset, "${first.out_dir}-copy"]'
        )
    )
    failed = cli("run", p, "--quiet")
    assert failed.exit_code == 2
    assert "Stage 'second' failed" in failed.stderr and "again to continue" in failed.stderr
    assert Path("out/first").is_dir()  # earlier output kept
    p.write_text(TINY)
    resumed = cli("run", p, "--json", "--quiet")
    assert _statuses(resumed) == {"first": "skipped", "second": "ok"}


def test_dry_run_prints_the_plan_and_runs_nothing(cli):
    p = _write(TINY)
    result = cli("run", p, "--dry-run")
    assert result.exit_code == 0
    assert "plan first: dlpipe data export digits out/first --limit 20 --force" in result.output
    assert "${first.out_dir}-copy" in result.output
    assert not Path("out").exists()


def test_only_and_from(cli):
    p = _write(TINY)
    assert _statuses(cli("run", p, "--json", "--quiet", "--only", "first")) == {"first": "ok"}
    assert _statuses(cli("run", p, "--json", "--quiet", "--from", "second")) == {"second": "ok"}
    bad = cli("run", p, "--only", "third")
    assert bad.exit_code == 2 and "no stage 'third'" in bad.stderr


@pytest.mark.parametrize(
    "text,line,words",
    [
        (TINY.replace("limit: 20", "limt: 20"), 7, "did you mean 'limit'"),
        (TINY.replace("limit: 30", "limit: lots"), 12, "valid integer"),
        (
            TINY.replace(
                "command: data export\n    args: [digits, out/first]",
                "command: trane\n    args: [digits, out/first]",
            ),
            4,
            "not a command",
        ),
        (TINY.replace("${first.out_dir}", "${third.out_dir}"), 9, "which is no stage"),
        (
            TINY.replace("args: [digits, out/first]", 'args: [digits, "${second.out_dir}"]'),
            4,
            "later stage",
        ),
        ("name: x\nstages:\n  - name: a\n    command: [unclosed\n", 5, "not valid YAML"),
        ("name: x\nstagez: []\n", 2, "unknown key 'stagez'"),
    ],
    ids=[
        "unknown-option",
        "bad-type",
        "bad-command",
        "unknown-ref",
        "forward-ref-cycle",
        "yaml",
        "top-key",
    ],
)
def test_bad_pipeline_files_give_line_numbered_errors(text, line, words):
    p = _write(text)
    with pytest.raises(BadInput) as err:
        load_pipeline(p)
    message = err.value.paragraph()
    assert f"p.yaml:{line}:" in message and words in message


def test_bad_set_override():
    p = _write(TINY)
    with pytest.raises(BadInput, match="STAGE.OPTION=VALUE"):
        load_pipeline(p, ["limit=3"])


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_pipelines_are_valid_against_the_real_commands(path):
    pipeline = load_pipeline(path)
    assert pipeline.stages
    # every exported model of a shipped pipeline is validated by a later stage
    exports = [s.name for s in pipeline.stages if s.command == ["export"]]
    validated = {r for s in pipeline.stages if s.command == ["validate"] for r in s.references()}
    assert set(exports) <= validated


def test_quickstart_covers_classifier_gan_and_autoencoder():
    pipeline = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml")
    commands = [" ".join(s.command) for s in pipeline.stages]
    for needed in ("finetune", "gan train", "ae train", "gan sample"):
        assert needed in commands
    assert commands.count("export") == 3 and commands.count("validate") == 3


# --- the plan of a big pipeline stays linear ------------------------------------------------------


class _Name(str):
    """A stage name that counts how often it is compared: a scan of all stages by name (a list
    where a set belongs) shows as comparisons growing with the square of the stage count."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _Name.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def _big(n: int) -> Path:
    """n stages in threes: finetune, export of its run, validate of that export."""
    lines = [f"name: big{n}", "stages:"]
    for i in range(0, n, 3):
        lines += [f"  - {{name: ft{i}, command: finetune, data: digits, epochs: 2}}",
                  f"  - {{name: ex{i}, command: export, args: ['${{ft{i}.run_dir}}'], force: true}}",
                  f"  - {{name: va{i}, command: validate, args: ['${{ex{i}.model}}'], "
                  f"against: '${{ft{i}.run_dir}}'}}"]  # fmt: skip
    return _write("\n".join(lines) + "\n", f"big{n}.yaml")


def _plan_work(n: int, monkeypatch) -> dict[str, int]:
    """Counts of the costly steps of loading, checking and planning an n-stage dry run."""
    import typing

    import yaml

    from dlpipe.pipeline import run_pipeline
    from dlpipe.pipeline.spec import check_pipeline

    calls = {"yaml round trips": 0, "get_type_hints": 0}

    def counted(name, fn):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(yaml, "serialize", counted("yaml round trips", yaml.serialize))
    monkeypatch.setattr(typing, "get_type_hints", counted("get_type_hints", typing.get_type_hints))
    pipeline = load_pipeline(_big(n))
    for stage in pipeline.stages:
        stage.name = _Name(stage.name)
    _Name.compared = 0
    check_pipeline(pipeline)
    summary = run_pipeline(pipeline, dry_run=True, echo=lambda *a, **k: None)
    assert [r["status"] for r in summary["stages"]] == ["would run"] * n
    return calls | {"name comparisons": _Name.compared}


def test_a_dry_run_does_the_same_work_per_stage_at_any_size(monkeypatch) -> None:
    """Was 41 ms per stage at 10,000 stages: a list scanned per reference, a YAML re-emit and
    re-parse per value, typing.get_type_hints per stage. Counted, not timed: 2,000 stages may
    compare names and parse types no more than 10x what 200 do, plus a constant."""
    small, large = _plan_work(201, monkeypatch), _plan_work(2001, monkeypatch)
    assert large["yaml round trips"] == small["yaml round trips"] == 0
    assert large["get_type_hints"] <= small["get_type_hints"] + 5  # once per config class
    assert large["name comparisons"] <= 10 * small["name comparisons"] + 100
    assert large["name comparisons"] <= 3 * 2001  # at most a few per stage
