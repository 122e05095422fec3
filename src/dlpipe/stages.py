"""The spine: every stage dlpipe runs, by the command name a user types.

The CLI, pipeline files and the Python API all look a stage up here and call the same function
with the same config dataclass, and get the same result dict back (what `--json` prints). Nothing
else in dlpipe keeps a list of the commands. Importing this module costs no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput
from .runs import RunOptions


@dataclass(frozen=True)
class Stage:
    """One command: its config dataclass, its function, and how its options are spelled."""

    command: str  # as typed after `dlpipe`, e.g. "gan train"
    config: str  # "module:Class" of the config dataclass (imported lazily)
    function: (
        str  # "module:function" taking (config, out) or, for training, (config, run, out, resume)
    )
    summary: str  # one line for listings
    positional: tuple[str, ...] = ()  # fields given as CLI arguments / a pipeline's `args:`
    aliases: dict[str, str] = field(default_factory=dict)  # CLI spelling -> config field
    run_folder: str | None = None  # training stages: RUNS_DIR/<run_folder>/<name>

    @property
    def trains(self) -> bool:
        """Whether the stage makes a run folder (and takes --name/--resume/...)."""
        return self.run_folder is not None

    def config_class(self) -> type:
        """The config dataclass."""
        return _load(self.config)

    def options(self) -> list[str]:
        """Every option name a pipeline stage or API call may give, in CLI spelling order."""
        names = list(field_names(self.config_class()))
        if self.trains:
            names += field_names(RunOptions)
        return names + list(self.aliases)


@functools.cache
def field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, read once per class (a pipeline checks every stage's options)."""
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """typing.get_type_hints, once per class: it evaluates every annotation string on each call,
    which cost more than all the rest of checking a pipeline stage. Callers must not modify it."""
    return typing.get_type_hints(cls)


STAGES: dict[str, Stage] = {
    s.command: s
    for s in (
        Stage("finetune", "dlpipe.config:FinetuneConfig", "dlpipe.train.classifier:run_finetune",
              "fine-tune a head on a frozen pretrained backbone", run_folder="finetune"),
        Stage("gan train", "dlpipe.config:GanConfig", "dlpipe.train.gan:train_gan",
              "train a DCGAN", run_folder="gan"),
        Stage("ae train", "dlpipe.config:AeConfig", "dlpipe.train.ae:train_autoencoder",
              "train a (denoising) autoencoder", run_folder="ae"),
        Stage("export", "dlpipe.export.onnx:ExportConfig", "dlpipe.export.commands:export_stage",
              "ONNX with preprocessing and metadata inside", positional=("source",),
              aliases={"out_path": "out"}),
        Stage("validate", "dlpipe.export.parity:ValidateConfig",
              "dlpipe.export.commands:validate_stage", "parity of onnxruntime vs PyTorch",
              positional=("model",)),
        Stage("predict", "dlpipe.export.predict:PredictConfig",
              "dlpipe.export.commands:predict_stage", "inference with onnxruntime alone",
              positional=("model", "images")),
        Stage("eval", "dlpipe.export.evaluate:EvalConfig", "dlpipe.export.evaluate:evaluate",
              "accuracy and confusion matrix on a labelled set", positional=("model",)),
        Stage("gan sample", "dlpipe.config:SampleConfig", "dlpipe.export.commands:sample_stage",
              "sample grids from a generator", positional=("model",), aliases={"n": "num"}),
        Stage("data export", "dlpipe.config:DataExportConfig", "dlpipe.data.write:export_builtin",
              "write a built-in set as PNG folders", positional=("name", "out_dir")),
    )
}  # fmt: skip


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def lookup(command: str | list[str]) -> Stage:
    """The stage a command names (`"gan train"` or `["gan", "train"]`), or BadInput with the closest."""
    name = " ".join(command) if isinstance(command, list) else " ".join(command.split())
    if name in STAGES:
        return STAGES[name]
    close = difflib.get_close_matches(name, list(STAGES), n=1)
    raise BadInput(
        f"`dlpipe {name}` is not a stage"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + ".",
        hint=f"Stages: {', '.join(STAGES)}.",
    )


def field_name(stage: Stage, option: str) -> str | None:
    """The config/run field an option spelled `image-size`, `image_size` or an alias names."""
    key = option.replace("-", "_")
    key = stage.aliases.get(key, key)
    return key if key in stage.options() else None


def build(
    stage: Stage,
    options: dict[str, Any],
    *,
    base: dict[str, Any] | None = None,
    required: bool = True,
) -> tuple[Any, RunOptions]:
    """(config, run options) from option values (any spelling), typed and range-checked.

    `base` holds values to start from (a saved config.yaml for `--config`); `options` win.
    `required=False` only checks the values given (a pipeline whose values come later): the
    config is then None."""
    cls = stage.config_class()
    hints = type_hints(cls)
    values: dict[str, Any] = dict(base or {})
    run_values: dict[str, Any] = {}
    run_fields = field_names(RunOptions)
    for option, raw in options.items():
        name = field_name(stage, option)
        if name is None:
            valid = stage.options()
            close = difflib.get_close_matches(option.replace("-", "_"), valid, n=1)
            raise BadInput(
                f"`dlpipe {stage.command}` has no option {option!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + ".",
                hint=f"Valid options: {', '.join(valid)}.",
            )
        if name in run_fields and stage.trains:
            run_values[name] = coerce(raw, type_hints(RunOptions)[name], option)
        else:
            values[name] = coerce(raw, hints[name], option)
    if not required:
        for name, value in values.items():
            if hasattr(cls, "check_value"):
                cls.check_value(name, value)
        return None, RunOptions(**run_values)
    missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in values]
    if missing:
        raise BadInput(
            f"`dlpipe {stage.command}` needs {', '.join(missing)}.",
            hint=f"Give it as {'an argument' if set(missing) & set(stage.positional) else 'an option'}.",
        )
    unknown = sorted(set(values) - set(hints))
    if unknown:  # from `base`: a config.yaml of another command or version
        raise BadInput(
            f"The saved options have keys `dlpipe {stage.command}` does not know "
            f"({', '.join(unknown[:5])}); they belong to another command or dlpipe version."
        )
    cfg = cls(**values)
    if hasattr(cfg, "check"):
        cfg.check()
    return tiny(stage, cfg), RunOptions(**run_values)


TINY_ENV = "DLPIPE_TINY"
# epochs, training images, validation/test images, GAN fd images; validate's inputs and timed runs
TINY_CAPS = {
    "epochs": 1,
    "limit": 64,
    "eval_limit": 32,
    "fd_images": 16,
    "n": 16,
    "latency_runs": 1,
}


def tiny(stage: Stage, cfg: Any) -> Any:
    """`cfg` at a tiny size when DLPIPE_TINY=1: the same command line and code path, seconds on a CPU.

    For tests and docs checks (tests/test_readme.py runs every README command this way); never set
    by dlpipe itself. Caps the fields a config has (TINY_CAPS); a staged fine-tune still unfreezes
    (after epoch 1 of 2). Training stages run on the CPU unless a device is named explicitly, so an
    explicit `--device cuda` still meets the machine as typed."""
    if os.environ.get(TINY_ENV, "") in ("", "0"):
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    values = {k: getattr(cfg, k) for k in TINY_CAPS if k in names}
    caps = {k: TINY_CAPS[k] if v is None else min(v, TINY_CAPS[k]) for k, v in values.items()}
    if getattr(cfg, "unfreeze_after", None) is not None:
        caps["unfreeze_after"] = min(cfg.unfreeze_after, 1)
        caps["epochs"] = min(cfg.epochs, caps["unfreeze_after"] + 1)
    if stage.trains and cfg.device == "auto":
        caps["device"] = "cpu"
    return dataclasses.replace(cfg, **caps)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def coerce(value: Any, hint: Any, option: str) -> Any:
    """`value` as the type `hint` asks (YAML and Python values alike), or BadInput naming `option`."""
    flag = "--" + option.replace("_", "-")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], option)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            items = [items]
        return [coerce(v.strip() if isinstance(v, str) else v, args[0], option) for v in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise BadInput(f"{flag} {value!r} is not a valid boolean (true or false).")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise BadInput(f"{flag} {value!r} is not a valid integer.")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BadInput(f"{flag} {value!r} is not a valid number.") from None
    if hint is Path:
        return Path(str(value))
    if hint is str:
        if isinstance(value, dict | list):
            raise BadInput(f"{flag} expects one value, not {type(value).__name__} {value!r}.")
        return str(value)
    return value


def run_stage(
    command: str | list[str],
    options: dict[str, Any],
    out: Any = None,
    *,
    explicit: set[str] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one stage in this process and return its result dict (what `--json` prints).

    `explicit`: the options the user gave (for --resume: those win over the saved config;
    default: every key of `options`). `base`: values to start from (`--config FILE`)."""
    from .console import quiet
    from .limits import check_options

    stage = lookup(command)
    cfg, run_opts = build(stage, options, base=base)
    check_options(vars(cfg))  # sizes and rates against this machine, before anything is allocated
    out = out or quiet()
    function = _load(stage.function)
    if not stage.trains:
        return function(cfg, out)
    given = {field_name(stage, k) for k in (options if explicit is None else explicit)}
    return _train(stage, cfg, run_opts, given - {None}, out, function)


def _train(stage: Stage, cfg: Any, run_opts: RunOptions, explicit: set, out: Any, fn: Any) -> Any:
    """A training stage: process group and device, the run folder (new or resumed), the run."""
    from .distributed import setup
    from .runs import open_run, tidy_on_failure
    from .train.accel import Accel

    dist_ctx, device = setup(cfg.device)
    Accel.create(cfg.amp, cfg.compile, device)  # a bad --amp fails before a run folder exists
    run, cfg = open_run(stage.run_folder, stage.command, cfg, run_opts, explicit, dist_ctx)
    if run_opts.resume:
        out.print(f"resuming {run.path}")
    with tidy_on_failure(run):
        return fn(cfg, run, out, resume=run_opts.resume)
