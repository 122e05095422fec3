"""One schema: every training option's default and range live in dlpipe.config, and the CLI agrees."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import click
import pytest
import typer
import yaml

from dlpipe.cli import app
from dlpipe.config import AeConfig, FinetuneConfig, GanConfig
from dlpipe.errors import BadInput
from dlpipe.stages import STAGES, build, lookup

TRAINING = {"finetune": FinetuneConfig, "gan train": GanConfig, "ae train": AeConfig}


def _command(name: str) -> click.Command:
    cmd = typer.main.get_command(app)
    for word in name.split():
        cmd = cmd.commands[word]  # type: ignore[attr-defined]
    return cmd


@pytest.mark.parametrize("command", sorted(TRAINING))
def test_cli_defaults_and_ranges_are_the_configs(command: str) -> None:
    cls = TRAINING[command]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {p.name: p for p in _command(command).params if p.name in fields}
    assert len(params) >= len(fields) - 3  # nearly every field is a CLI option
    for name, p in params.items():
        f = fields[name]
        default = p.default if not callable(p.default) else p.default()
        default = str(default) if name == "data_root" and default is not None else default
        assert default == f.default, f"--{name}: CLI default {default!r} != config {f.default!r}"
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        assert (p.min, p.max) == (lo, hi), f"--{name}: CLI range {p.min}..{p.max} != {lo}..{hi}"
        if f.metadata.get("choices"):
            shown = typing.get_args(p.type_descriptor.annotation)
            assert shown == f.metadata["choices"], f"--{name}: --help should list the choices"


def test_config_check_names_the_option() -> None:
    with pytest.raises(BadInput, match=r"--optimizer 'adamm' is not one of .*did you mean 'adam'"):
        build(STAGES["finetune"], {"optimizer": "adamm"})
    with pytest.raises(BadInput, match=r"--dropout 2.0 is outside its range 0.0..0.95"):
        build(STAGES["finetune"], {"dropout": 2.0})
    with pytest.raises(BadInput, match=r"has no option 'epoch' \(did you mean 'epochs'\?\)"):
        build(STAGES["gan train"], {"epoch": 3})


def test_unknown_stage_suggests_the_closest() -> None:
    with pytest.raises(BadInput, match="did you mean 'gan train'"):
        lookup("gan trian")


def test_config_file_reruns_a_saved_configuration_and_typed_options_win(cli) -> None:
    from tests.conftest import parse_json

    tiny = ["--data", "digits", "--limit", "60", "--batch-size", "32", "--device", "cpu", "--json"]
    first = cli("ae", "train", *tiny, "--width", "8", "--latent", "4", "--epochs", "1")
    assert first.exit_code == 0, first.output
    saved = Path(parse_json(first.stdout)["run_dir"]) / "config.yaml"
    again = cli("ae", "train", "--config", saved, "--name", "again", "--seed", "3", "--json")
    assert again.exit_code == 0, again.output
    cfg = yaml.safe_load((Path(parse_json(again.stdout)["run_dir"]) / "config.yaml").read_text())
    assert (cfg["width"], cfg["latent"], cfg["limit"], cfg["seed"]) == (8, 4, 60, 3)
    Path("junk.yaml").write_text("- a list\n")
    bad = cli("ae", "train", "--config", "junk.yaml")
    assert bad.exit_code == 2 and "expected a mapping" in bad.output
