"""`dlpipe run --dry-run` cost per stage at 1,000 and 10,000 stages (the plan must stay linear).

A pipeline of N stages is the quickstart's stages repeated with renamed stages and references
(finetune, export, validate, gan train, gan sample, ae train, ...). Loading (YAML, checks against
the stage registry), planning and the summary table run in this process; the CPU time of each is
divided by N. CPU time, not wall time: this machine is shared and the ratio is what matters.

    .venv/bin/python benchmarks/bench_plan.py                       # 1,000 and 10,000 stages
    .venv/bin/python benchmarks/bench_plan.py --stages 200,2000 --out benchmarks/results/plan.md
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_pipeline(n: int, folder: Path) -> Path:
    """pipelines/quickstart.yaml's stages repeated to `n`, each copy's names and refs suffixed."""
    block = yaml.safe_load((ROOT / "pipelines/quickstart.yaml").read_text())["stages"]
    stages = []
    for k in range(-(-n // len(block))):
        text = yaml.safe_dump(block)
        text = re.sub(r"\$\{([A-Za-z0-9_-]+)\.", rf"${{\1-{k}.", text)
        text = text.replace("exports/quickstart-", f"exports/q{k}-")
        for st in yaml.safe_load(text):
            stages.append({**st, "name": f"{st['name']}-{k}"})
    path = folder / f"plan{n}.yaml"
    path.write_text(yaml.safe_dump({"name": f"plan{n}", "stages": stages[:n]}, sort_keys=False))
    return path


def measure(path: Path) -> dict[str, float]:
    """CPU milliseconds per stage of load_pipeline, the dry-run plan and the summary table."""
    from rich.console import Console

    from dlpipe.cli.pipeline import _table
    from dlpipe.console import Output
    from dlpipe.pipeline import load_pipeline, run_pipeline

    out = Output()
    out.console = Console(file=io.StringIO(), width=120, highlight=False)  # rendered, not shown
    t0 = time.process_time()
    pipeline = load_pipeline(path)
    t1 = time.process_time()
    summary = run_pipeline(pipeline, dry_run=True, echo=out.print, out=out)
    t2 = time.process_time()
    out.print(_table(summary))
    t3 = time.process_time()
    n = len(pipeline.stages)
    per = lambda s: 1000 * s / n  # noqa: E731
    return {"stages": n, "load": per(t1 - t0), "plan": per(t2 - t1), "table": per(t3 - t2),
            "total": per(t3 - t0)}  # fmt: skip


def main() -> None:
    """Measure each size in a fresh folder; print (and optionally write) a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1000,10000", help="Comma list of pipeline sizes.")
    parser.add_argument("--out", type=Path, default=None, help="Markdown results file.")
    args = parser.parse_args()
    lines = ["| stages | load ms/stage | plan ms/stage | table ms/stage | total ms/stage |",
             "|---|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.chdir(tmp)  # the dry run reads runs/pipelines/NAME/state.json: none here
        for n in (int(s) for s in args.stages.split(",")):
            r = measure(make_pipeline(n, Path(tmp)))
            lines.append(f"| {r['stages']:,} | {r['load']:.2f} | {r['plan']:.2f} | "
                         f"{r['table']:.2f} | {r['total']:.2f} |")  # fmt: skip
            print(lines[-1], flush=True)
    text = f"`dlpipe run --dry-run`, CPU time per stage (Python {sys.version.split()[0]})\n\n"
    text += "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
