"""Pipeline files: parse with line numbers, check every option against the real CLI command.

A stage's keys other than `name`, `command` and `args` are the command's own options, spelled as on
the command line without the dashes (`image-size` or `image_size`). They are checked against the
Typer command itself, so the CLI and pipeline files share one definition of names and types.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import BadInput

RESERVED = ("name", "command", "args")
REF = re.compile(r"\$\{([A-Za-z0-9_-]+)((?:\.[A-Za-z0-9_-]+)+)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class Stage:
    """One step: `dlpipe <command> <args> --option value ...`."""

    name: str
    command: list[str]
    args: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    option_lines: dict[str, int] = field(default_factory=dict)

    def references(self) -> set[str]:
        """Names of the stages whose outputs this stage uses."""
        found: set[str] = set()
        for value in [*self.args, *self.options.values()]:
            found |= {m.group(1) for m in REF.finditer(str(value))}
        return found


@dataclass
class Pipeline:
    """A named, ordered list of stages read from a file."""

    name: str
    path: Path
    stages: list[Stage]
    runs_dir: str | None = None

    def stage(self, name: str) -> Stage:
        """The stage called `name`, or a clear error listing the valid names."""
        for s in self.stages:
            if s.name == name:
                return s
        raise BadInput(
            f"{self.path}: there is no stage {name!r}.",
            hint=f"Stages: {', '.join(s.name for s in self.stages)}.",
        )


def _fail(path: Path, line: int, message: str, hint: str | None = None) -> BadInput:
    return BadInput(f"{path}:{line}: {message}", hint=hint)


def _plain(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _mapping_items(node: yaml.Node) -> list[tuple[str, yaml.Node, int]]:
    return [(str(k.value), v, k.start_mark.line + 1) for k, v in node.value]


def _refuse_duplicates(path: Path, node: yaml.Node, seen_nodes: set[int] | None = None) -> None:
    """A key given twice in one mapping (YAML silently keeps the last) is a mistake: refuse it.
    Each node is visited once (aliases share nodes: a billion-laughs file stays cheap)."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if str(key.value) in seen:
                raise _fail(
                    path,
                    line,
                    f"key {key.value!r} is given twice (first on line {seen[key.value]}).",
                )
            seen[str(key.value)] = line
            _refuse_duplicates(path, value, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(path, item, seen_nodes)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Read and check a pipeline file; `overrides` are `stage.option=value` strings."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(
            f"Pipeline file {path} does not exist.", hint="See pipelines/*.yaml for examples."
        )
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(
            path, 0, f"not UTF-8 text (byte {exc.start}); a pipeline file is YAML."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise _fail(path, line, f"not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    if not isinstance(root, yaml.MappingNode):
        raise _fail(path, 1, "a pipeline file is a mapping with `name` and `stages`.")
    _refuse_duplicates(path, root)
    top = {k: (v, line) for k, v, line in _mapping_items(root)}
    unknown = set(top) - {"name", "stages", "runs_dir", "description"}
    for key in unknown:
        raise _fail(
            path,
            top[key][1],
            f"unknown key {key!r}.",
            hint="Valid keys: name, description, runs_dir, stages.",
        )
    if "stages" not in top or not isinstance(top["stages"][0], yaml.SequenceNode):
        raise _fail(path, 1, "`stages` must be a list of stages.")
    stages = [_stage(path, node, i) for i, node in enumerate(top["stages"][0].value)]
    name = (
        str(_plain(top["name"][0])) if "name" in top else re.sub(r"[^A-Za-z0-9_-]", "-", path.stem)
    )
    if not _NAME.match(name):  # it names a folder under runs/pipelines/: no "..", "/" or markup
        raise _fail(
            path,
            top["name"][1] if "name" in top else 1,
            f"pipeline name {name!r} may use letters, digits, '-' and '_' only.",
            hint="It names the folder runs/pipelines/NAME that holds the pipeline's state.",
        )
    pipeline = Pipeline(
        name=name,
        path=path,
        stages=stages,
        runs_dir=str(_plain(top["runs_dir"][0])) if "runs_dir" in top else None,
    )
    for text in overrides or []:
        _apply_override(pipeline, text)
    check_pipeline(pipeline)
    return pipeline


def _stage(path: Path, node: yaml.Node, index: int) -> Stage:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, line, f"stage {index + 1} must be a mapping with `name` and `command`.")
    items = {k: (v, ln) for k, v, ln in _mapping_items(node)}
    for key in ("name", "command"):
        if key not in items:
            raise _fail(path, line, f"stage {index + 1} has no `{key}`.")
    name = str(_plain(items["name"][0]))
    if not _NAME.match(name):
        raise _fail(
            path,
            items["name"][1],
            f"stage name {name!r} may use letters, digits, '-' and '_' only.",
        )
    args = _plain(items["args"][0]) if "args" in items else []
    return Stage(
        name=name,
        command=str(_plain(items["command"][0])).split(),
        args=args if isinstance(args, list) else [args],
        options={k: _plain(v) for k, (v, _) in items.items() if k not in RESERVED},
        line=line,
        option_lines={k: ln for k, (_, ln) in items.items()},
    )


def _apply_override(pipeline: Pipeline, text: str) -> None:
    key, sep, value = text.partition("=")
    stage_name, dot, option = key.partition(".")
    if not sep or not dot or not option:
        raise BadInput(
            f"--set {text!r} is not STAGE.OPTION=VALUE.", hint="Example: --set classify.epochs=3"
        )
    pipeline.stage(stage_name).options[option] = yaml.safe_load(value) if value else ""


def command_for(tokens: list[str]):  # noqa: ANN201 - the click command
    """The real CLI command a stage names (e.g. ['gan', 'train'])."""
    import typer

    from ..cli import app

    cmd = typer.main.get_command(app)
    for token in tokens:
        sub = getattr(cmd, "commands", {}).get(token)
        if sub is None:
            return None
        cmd = sub
    return None if hasattr(cmd, "commands") else cmd


def option_param(cmd: Any, option: str) -> Any:
    """The click parameter for an option spelled `image-size` or `image_size`, else None."""
    wanted = "--" + option.replace("_", "-")
    for p in cmd.params:
        if p.param_type_name == "option" and (wanted in p.opts or wanted in p.secondary_opts):
            return p
    return None


def check_pipeline(pipeline: Pipeline) -> None:
    """Every command, option, type and reference is valid, or a line-numbered error says why."""
    seen: list[str] = []
    for stage in pipeline.stages:
        path = pipeline.path
        if stage.name in seen:
            raise _fail(path, stage.line, f"stage name {stage.name!r} is used twice.")
        cmd = command_for(stage.command)
        if cmd is None:
            raise _fail(
                path, stage.line, f"stage {stage.name!r}: `dlpipe {' '.join(stage.command)}` is not a command.",
                hint="Commands: finetune, gan train, gan sample, ae train, export, validate, predict, data export.",
            )  # fmt: skip
        for option in stage.options:
            line = stage.option_lines.get(option, stage.line)
            param = option_param(cmd, option)
            if param is None:
                valid = sorted(
                    o[2:]
                    for p in cmd.params
                    for o in p.opts
                    if o.startswith("--") and o != "--json"
                )
                close = difflib.get_close_matches(option.replace("_", "-"), valid, n=1)
                raise _fail(
                    path, line, f"stage {stage.name!r}: `dlpipe {' '.join(stage.command)}` has no option {option!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "") + ".",
                    hint=f"Valid options: {', '.join(valid)}.",
                )  # fmt: skip
        for ref in stage.references():
            if ref not in seen:
                where = (
                    "a later stage (stages run in order; no cycles)"
                    if ref in {s.name for s in pipeline.stages}
                    else "no stage"
                )
                raise _fail(
                    path, stage.line, f"stage {stage.name!r} refers to {ref!r}, which is {where}."
                )
        _check_types(path, stage, cmd)
        seen.append(stage.name)


def stage_argv(stage: Stage, cmd: Any, resolve: Any) -> list[str]:
    """`<command> <args> --option value ...` for a stage; `resolve` maps each raw value."""
    argv = [*stage.command, *(str(resolve(a)) for a in stage.args)]
    for option, raw in stage.options.items():
        param = option_param(cmd, option)
        value = resolve(raw)
        flag = "--" + option.replace("_", "-")
        if param.is_flag:
            if value:
                argv.append(flag)
            elif param.secondary_opts:
                argv.append(param.secondary_opts[0])
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _check_types(path: Path, stage: Stage, cmd: Any) -> None:
    """Parse the stage's command line with the real command (types, ranges, required args)."""
    from typer.exceptions import TyperException

    def placeholder(value: Any) -> Any:
        return "from-earlier-stage" if isinstance(value, str) and REF.search(value) else value

    argv = stage_argv(stage, cmd, placeholder)[len(stage.command) :]
    try:
        cmd.make_context(" ".join(["dlpipe", *stage.command]), argv)
    except TyperException as exc:
        message = exc.format_message()
        line = stage.line
        for option, ln in stage.option_lines.items():
            if f"--{option.replace('_', '-')}" in message:
                line = ln
        raise _fail(path, line, f"stage {stage.name!r}: {message}") from None
