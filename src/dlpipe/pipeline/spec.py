"""Pipeline files: parse with line numbers, check every option against the stage registry.

A stage's keys other than `name`, `command` and `args` are the command's own options, spelled as on
the command line without the dashes (`image-size` or `image_size`). They are checked against the
stage's config dataclass (dlpipe.stages), the same one the CLI and the Python API fill in: one
definition of names, types and ranges.
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


# libyaml's parser where PyYAML has it (about 10x faster than the pure-Python one; same nodes)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _plain(node: yaml.Node) -> Any:
    """A node's Python value, built from the node itself (re-emitting it as text to parse again
    cost more than the whole check of a stage)."""
    return yaml.constructor.SafeConstructor().construct_document(node)


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
    root = _compose(path)
    _refuse_duplicates(path, root)
    try:
        pipeline = _from_root(path, root)
    except yaml.YAMLError as exc:  # a tag no safe loader builds (!!python/object/apply:...)
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or exc
        raise _fail(path, mark.line + 1 if mark else 0, f"not a plain YAML value ({problem}).",
                    hint="Pipeline values are numbers, strings, booleans and lists.") from None  # fmt: skip
    for text in overrides or []:
        _apply_override(pipeline, text)
    check_pipeline(pipeline)
    return pipeline


def _compose(path: Path) -> yaml.MappingNode:
    """The file's YAML node tree (with line numbers), or a clear error."""
    if not path.is_file():
        raise BadInput(
            f"Pipeline file {path} does not exist.", hint="See pipelines/*.yaml for examples."
        )
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=_Loader)
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
    return root


def _from_root(path: Path, root: yaml.MappingNode) -> Pipeline:
    """The pipeline a checked node tree describes: top-level keys, stages, name."""
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
    runs_dir = str(_plain(top["runs_dir"][0])) if "runs_dir" in top else None
    return Pipeline(name=name, path=path, stages=stages, runs_dir=runs_dir)


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


def stage_def(tokens: list[str]) -> Any:
    """The registry entry a stage's `command:` names (dlpipe.stages.Stage)."""
    from ..stages import lookup

    return lookup(tokens)


def check_pipeline(pipeline: Pipeline) -> None:
    """Every command, option, type and reference is valid, or a line-numbered error says why."""
    from ..stages import STAGES, field_name

    seen: set[str] = set()  # a set: a list made the check quadratic in the number of stages
    for stage in pipeline.stages:
        path = pipeline.path
        if stage.name in seen:
            raise _fail(path, stage.line, f"stage name {stage.name!r} is used twice.")
        try:
            spec = stage_def(stage.command)
        except BadInput:
            raise _fail(
                path, stage.line, f"stage {stage.name!r}: `dlpipe {' '.join(stage.command)}` is not a command.",
                hint=f"Commands: {', '.join(STAGES)}.",
            ) from None  # fmt: skip
        for option in stage.options:
            if field_name(spec, option) is None or option.replace("-", "_") in spec.positional:
                line = stage.option_lines.get(option, stage.line)
                valid = sorted(
                    o.replace("_", "-") for o in spec.options() if o not in spec.positional
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
        _check_types(path, stage, spec)
        seen.add(stage.name)


def stage_options(stage: Stage, spec: Any, resolve: Any) -> dict[str, Any]:
    """The stage's options by config field name: `args` onto the positional fields (the last one
    takes the rest when it is a list), then the options; `resolve` maps each raw value."""
    values: dict[str, Any] = {}
    args = [resolve(a) for a in stage.args]
    fields = list(spec.positional)
    if len(args) > len(fields) and fields and fields[-1] == "images":
        args = [*args[: len(fields) - 1], args[len(fields) - 1 :]]
    if len(args) > len(fields):
        raise BadInput(
            f"stage {stage.name!r}: `dlpipe {' '.join(stage.command)}` takes {len(fields)} "
            f"argument(s) ({', '.join(fields) or 'none'}), got {len(args)}."
        )
    values.update(zip(fields, args, strict=False))
    for option, raw in stage.options.items():
        values[option.replace("-", "_")] = resolve(raw)
    return values


def command_line(stage: Stage, spec: Any, resolve: Any) -> str:
    """How the stage reads as a command line (for plans, logs and the summary)."""
    words = [*stage.command, *(str(resolve(a)) for a in stage.args)]
    for option, raw in stage.options.items():
        value, flag = resolve(raw), "--" + option.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            words += [flag, ",".join(str(v) for v in value)]
        elif value is not None:
            words += [flag, str(value)]
    return " ".join(words)


def _check_types(path: Path, stage: Stage, spec: Any) -> None:
    """Build the stage's config from its values (types, ranges, required arguments), with a
    placeholder for values that come from earlier stages."""
    from ..stages import build

    def placeholder(value: Any) -> Any:
        return None if isinstance(value, str) and REF.search(value) else value

    try:
        values = stage_options(stage, spec, placeholder)
        later = {k for k, v in values.items() if v is None}
        build(spec, {k: v for k, v in values.items() if k not in later}, required=False)
    except BadInput as exc:
        message = exc.paragraph()
        line = stage.line
        for option, ln in stage.option_lines.items():
            if f"--{option.replace('_', '-')}" in message:
                line = ln
        raise _fail(path, line, f"stage {stage.name!r}: {message}") from None
