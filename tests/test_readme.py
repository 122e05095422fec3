"""Every command of README.md, run as written, in README order, at a tiny size.

A newcomer follows the README from top to bottom; so does this test. It collects every `dlpipe`
line of the README's ```bash blocks and every `$ dlpipe` line of its ```console blocks, and runs
them through the real CLI in one folder, one after another (later commands use what earlier ones
wrote: runs/finetune/exp, exports/exp.onnx, ...), with DLPIPE_TINY=1 so each training command takes
seconds (stages.tiny: 1 epoch, 64 images, CPU). New README lines need no change here: they run and
must exit 0. A line that cannot do what it says on this machine is listed in EXPECTED, with why.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^\s*```\s*(\w*)\s*$")
SKIP = None  # an EXPECTED exit code: the line is not run here (the reason says why)

# Shell lines that stand for a dlpipe command: what the Makefile target runs after `make install`
# (the install is the environment these tests run in).
ALIASES = {"make demo": "dlpipe run pipelines/quickstart.yaml"}

# Files a command promises without naming them on its line (README prose says so).
PROMISED = {
    "make demo": [
        "exports/quickstart-classifier.onnx",
        "exports/quickstart-generator.onnx",
        "exports/quickstart-denoiser.onnx",
        "exports/quickstart-samples.png",
        "runs/pipelines/quickstart/summary.json",
    ],
}


# README lines (by a substring) that do not exit 0 on a CPU machine, or are not run: (exit, why).
EXPECTED: dict[str, tuple[int | None, str]] = {
    "weights import ~/Downloads/": (
        2,
        "the user's own download; not here, so the clear 'no such file' error",
    ),
    "--device cuda ...": (SKIP, "a template: `...` stands for the user's other options"),
    "--nproc 4": (
        SKIP,
        "4 processes with bf16 autocast want 4 GPUs; resnet50's ImageNet weights are not offline",
    ),
    "quickstart.yaml --force": (
        SKIP,
        "make demo ran the same stages a few lines above; --force only runs them again (~10% of "
        "this test's time); the skip-when-up-to-date path is covered by tests/test_pipeline.py",
    ),
    "--log tensorboard,mlflow": (
        0 if importlib.util.find_spec("mlflow") else 3,
        "mlflow is opt-in (pip install 'dlpipe[mlflow]'), not part of make install: without it the "
        "command stops before training with exit 3, naming the extra",
    ),
    "--providers cpu,cuda": (
        3,
        "no CUDA/TensorRT provider runs on a CPU machine: everything else passed, exit 3",
    ),
}
# Lines whose EXPECTED outcome holds only without CUDA: not run where torch sees a GPU.
CPU_ONLY = {"--providers cpu,cuda"}


def stand_ins(root: Path) -> list[str]:
    """The user's own files the README assumes, as small real stand-ins; returns what was made."""
    rng = np.random.default_rng(0)
    made = []
    for c, name in enumerate(["cat", "dog", "bird"]):  # ./my_images: an ImageFolder, 3 classes
        (root / "my_images" / name).mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            arr[:, :, c] += 150
            Image.fromarray(arr).save(root / "my_images" / name / f"{i}.png")
    made.append("my_images/{cat,dog,bird}/*.png (3 x 8 RGB 32x32)")
    (root / "photos").mkdir()  # photos/: a flat folder of photos (gan train, predict)
    for i in range(20):
        arr = rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "photos" / f"img{i:02d}.jpg")
    made.append("photos/*.jpg (20 RGB 80x72, flat)")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "cat.jpg")
    made.append("cat.jpg")
    (root / "pipelines").mkdir()  # the shipped pipelines, as in a clone
    for f in (README.parent / "pipelines").glob("*.yaml"):
        (root / "pipelines" / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    made.append("pipelines/*.yaml (copied from the repository)")
    return made


@dataclasses.dataclass
class Command:
    line: int  # README line number (of the first line)
    text: str  # as written, continuations joined
    argv: list[str]  # after `dlpipe`, comments dropped
    comment: str  # the trailing `# ...`, if any


def readme_commands(text: str) -> list[Command]:
    """The dlpipe commands of the README's bash and console blocks, in order."""
    commands: list[Command] = []
    lang: str | None = None
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        fence = FENCE.match(raw)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        line = raw.strip()
        if lang not in ("bash", "console") or not (line or pending):
            continue
        if pending:
            line, pending = f"{pending} {line}", ""
        elif lang == "console":
            if not line.startswith("$ "):
                continue  # program output
            line = line[2:].strip()
        if line.endswith("\\"):
            pending, start = line[:-1].rstrip(), start or number
            continue
        first, start = start or number, 0
        command = next((v for k, v in ALIASES.items() if line.split("#")[0].strip() == k), line)
        if not command.startswith("dlpipe "):
            continue
        words = shlex.split(command, comments=True)
        comment = line.partition(" #")[2].strip() if " #" in line else ""
        commands.append(Command(first, line, words[1:], comment))
    return commands


def named_outputs(cmd: Command) -> list[str]:
    """Files the command says it writes: `--out X`, `--save-csv X`, paths in its comment."""
    files = [
        cmd.argv[i + 1]
        for i, word in enumerate(cmd.argv[:-1])
        if word in ("--out", "--save-csv") and not cmd.argv[i + 1].startswith("-")
    ]
    files += re.findall(r"(?:exports|runs)/[\w./-]+\w", cmd.comment)
    return files + PROMISED.get(cmd.text.split("#")[0].strip(), [])


def run_folder(argv: list[str]) -> str | None:
    """runs/<folder> for a training command, else None."""
    from dlpipe.stages import STAGES

    for words in (argv[:2], argv[:1]):
        stage = STAGES.get(" ".join(words))
        if stage is not None:
            return stage.run_folder
    return None


def test_readme_parser_reads_blocks_continuations_and_comments():
    text = """
```bash
dlpipe gan train --data 'my photos/' --epochs 2   # a comment
torchrun -m dlpipe gan train
dlpipe finetune --backbone resnet50 \\
  --no-freeze  # two lines
make demo
```
```console
$ dlpipe inspect exports/a.onnx
dlpipe printed output, not a command
```
```
dlpipe not a shell block
```
"""
    cmds = readme_commands(text)
    assert [c.argv for c in cmds] == [
        ["gan", "train", "--data", "my photos/", "--epochs", "2"],
        ["finetune", "--backbone", "resnet50", "--no-freeze"],
        ["run", "pipelines/quickstart.yaml"],
        ["inspect", "exports/a.onnx"],
    ]
    assert cmds[1].line == 5 and cmds[0].comment == "a comment"


def test_tiny_caps_training_and_keeps_staged_unfreezing(monkeypatch: pytest.MonkeyPatch):
    from dlpipe.stages import build, lookup

    staged = {"epochs": 6, "unfreeze_after": 3, "limit": 1000}
    monkeypatch.delenv("DLPIPE_TINY", raising=False)
    assert build(lookup("finetune"), staged)[0].epochs == 6  # off: untouched
    monkeypatch.setenv("DLPIPE_TINY", "1")
    cfg = build(lookup("finetune"), staged)[0]
    assert (cfg.epochs, cfg.unfreeze_after, cfg.limit, cfg.eval_limit) == (2, 1, 64, 32)
    assert cfg.device == "cpu"
    gan = build(lookup("gan train"), {"epochs": 25, "fd_every": 5, "limit": 10})[0]
    assert (gan.epochs, gan.limit, gan.fd_images, gan.fd_every) == (1, 10, 16, 5)
    assert build(lookup("ae train"), {"device": "cuda"})[0].device == "cuda"  # named: kept
    assert build(lookup("gan sample"), {"model": "g.onnx", "num": 64})[0].num == 64  # no caps
    check = build(lookup("validate"), {"model": "m.onnx", "latency_runs": 0})[0]
    assert (check.n, check.latency_runs) == (16, 0)  # 0 (skip) stays 0


@pytest.mark.slow
def test_every_readme_command_runs(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """All README commands in one folder and one test (they build on each other), in order."""
    import torch

    monkeypatch.setenv("DLPIPE_TINY", "1")
    monkeypatch.setenv("DLPIPE_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/Downloads/... is nobody's real file
    stand_ins(tmp_path)
    table = dict(EXPECTED)
    if torch.cuda.is_available():
        table.update({k: (SKIP, "this machine has CUDA") for k in CPU_ONLY})
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 40, "the README lost its examples, or the parser broke"
    used, failures, timings = set(), [], []
    for cmd in commands:
        key = next((k for k in table if k in cmd.text), None)
        code, why = table[key] if key else (0, "")
        used.add(key)
        if code is SKIP:
            continue
        started = time.time()
        res = cli(*cmd.argv)
        timings.append((time.time() - started, cmd.line))
        print(
            f"{timings[-1][0]:6.1f}s exit {res.exit_code} README.md:{cmd.line} {cmd.text}",
            flush=True,
        )
        where = f"README.md:{cmd.line}: dlpipe {shlex.join(cmd.argv)}"
        if res.exit_code != code:
            failures.append(f"{where}\n  exit {res.exit_code}, expected {code} {why}\n"
                            f"  {res.stderr.strip()[-600:]}")  # fmt: skip
            continue
        missing = [f for f in named_outputs(cmd) if code == 0 and not Path(f).exists()]
        folder = run_folder(cmd.argv)
        if code == 0 and folder and "--nproc" not in cmd.argv:
            # a resume of a finished run (tiny: 1 epoch) has nothing to write: its checkpoint
            # may be older than the command
            since = 0 if "--resume" in cmd.argv else started - 1
            fresh = [
                p
                for p in Path("runs", folder).glob("*/checkpoints/last.safetensors")
                if p.stat().st_mtime >= since
            ]
            missing += [] if fresh else [f"runs/{folder}/*/checkpoints/last.safetensors"]
        if missing:
            failures.append(f"{where}\n  exit {code} but missing: {', '.join(missing)}")
    slowest = ", ".join(f"line {n}: {s:.0f}s" for s, n in sorted(timings)[::-1][:5])
    assert not failures, "\n".join(failures) + f"\n(slowest: {slowest})"
    stale = set(table) - used
    assert not stale, f"EXPECTED names lines the README no longer has: {stale}"
