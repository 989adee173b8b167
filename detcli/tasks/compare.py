"""detcli compare RUN RUN... | SWEEP_DIR [--out DIR]: finished runs side by side. Prints one table (each run,
the config keys whose values differ between the runs, its best val mAP, final mAP / mAP50 and steps) and
writes compare.png (val mAP and training loss of every run, overlaid) to --out (default: the current
folder). A run folder holds config.yaml, train_log.jsonl and eval_log.jsonl; a sweep folder (`detcli
train -m`) holds such runs as its job subfolders. Not a Hydra app: folders and a flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from detcli import runlog
from detcli.config import differing_keys, flatten, short


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detcli compare", description=__doc__.split("\n\n")[0],
                                epilog="e.g. detcli compare runs/multirun/2025-01-01_12-00-00 --out cmp")
    p.add_argument("runs", nargs="+", help="run folders (with config.yaml), or a sweep folder of them")
    p.add_argument("--out", default=".", help="folder for compare.png (default: the current folder)")
    return p.parse_args(argv)


def find_runs(paths: list[str]) -> list[Path]:
    """Each path as a run folder, or a sweep folder's job subfolders (by job number); ValueError naming a
    path that is neither."""
    runs = []
    for arg in paths:
        path = Path(arg).expanduser()
        if (path / "config.yaml").is_file():
            runs.append(path)
            continue
        jobs = [p.parent for p in path.glob("*/config.yaml")] if path.is_dir() else []
        if not jobs:
            what = "does not exist" if not path.exists() else "has no config.yaml, nor job subfolders with one"
            raise ValueError(f"'{path}' {what}: give run folders (detcli train's output, with config.yaml) "
                             f"or a sweep folder (detcli train -m's, with a subfolder per job).")
        runs += sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return runs


def run_names(runs: list[Path]) -> list[str]:
    """Each run's path relative to the folder all of them share (its own name when alone)."""
    if len(runs) == 1:
        return [runs[0].name]
    common = os.path.commonpath([str(r.resolve()) for r in runs])
    return [os.path.relpath(r.resolve(), common) for r in runs]


def summarise(run: Path, keys: list[str]) -> dict:
    """One row of the table: the differing keys' values, best / final val mAP, final mAP50, steps."""
    config = flatten(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
    train_log, eval_log = runlog.train_log(run), runlog.eval_log(run)
    steps = max([r["step"] for r in train_log + eval_log], default=0)
    final = eval_log[-1] if eval_log else {}
    return {"config": {k: config.get(k, "-") for k in keys}, "best_map": max((r["map"] for r in eval_log), default=None),
            "map": final.get("map"), "map_50": final.get("map_50"), "steps": steps, "train_log": train_log,
            "eval_log": eval_log}


def main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from detcli.visualization.plots import compare_curves

    args = parse(argv)
    try:
        runs = find_runs(args.runs)
    except ValueError as e:
        print(f"detcli compare: {e}", file=sys.stderr)
        return 2
    configs = [OmegaConf.to_container(OmegaConf.load(r / "config.yaml")) for r in runs]
    keys = differing_keys(configs)
    names = run_names(runs)
    rows = [summarise(r, keys) for r in runs]
    table = Table(title=f"{len(runs)} runs: {len(keys)} config keys differ")
    for column in ("run", "differing config keys", "best map", "final map", "final map_50", "steps"):
        table.add_column(column, justify="left" if column in ("run", "differing config keys") else "right")
    for name, row in zip(names, rows):
        diff = "\n".join(f"{k}={short(v)}" for k, v in row["config"].items()) or "(same config)"
        table.add_row(name, diff, *(_fmt(row[k]) for k in ("best_map", "map", "map_50")), str(row["steps"]))
    Console(width=max(120, Console().width)).print(table)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    labels = [f"{n} " + " ".join(f"{k.split('.')[-1]}={short(v, 20)}" for k, v in list(r["config"].items())[:3])
              for n, r in zip(names, rows)]
    compare_curves([(label.strip(), r["train_log"], r["eval_log"]) for label, r in zip(labels, rows)],
                   out / "compare.png")
    print(f"curves written to {out / 'compare.png'}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
