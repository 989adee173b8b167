"""The accuracy benchmark's detcli runs (scripts/bench_accuracy.py, scripts/check_cpu_precision.py): a
checkout of an older commit as a git worktree, `python -m detcli train` launched from a tree given only the
data, the length, the batch and the size, and its results read back from the run folder (the last
evaluation of eval_log.jsonl, the training images/s of train_log.jsonl, the tree's revision).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchkit.common import ROOT
from benchkit.datasets import data_overrides

PRESETS = ("yolox_cpu", "yolox_nano", "yolox_tiny", "yolox_r18", "fcos_lite")  # experiment=<name>: their own backbones
RUNS = ("before", "after", "torchvision", "yolox", "ultralytics", *PRESETS)
# the detcli runs that differ from the current defaults
EXTRA_OVERRIDES = {"yolox": ["head=yolox"], **{p: [f"experiment={p}"] for p in PRESETS}}


def before_tree(path: Path | None, cache: Path, commit: str) -> Path:
    """A checkout of detcli at `commit`: the given folder, else a git worktree made once in the cache."""
    if path is not None:
        return path.resolve()
    path = (cache / f"detcli_{commit}").resolve()
    if not (path / "detcli").is_dir():  # --force: the folder may be gone while git still lists it
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(path), commit],
                       check=True)
    return path


def revision(tree: Path) -> str:
    """The tree's commit, with +dirty when tracked files differ from it."""
    def git(*a: str) -> str:
        proc = subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def train_img_per_s(train_log: Path, batch: int) -> float | None:
    """Training images/s over the run, from train_log.jsonl (each line covers the steps since the last)."""
    if not train_log.is_file():
        return None
    images = seconds = last = 0
    for line in train_log.read_text().splitlines():
        r = json.loads(line)
        n = (r["step"] - last) * batch
        images, seconds, last = images + n, seconds + n / r["img_per_s"], r["step"]
    return images / seconds if seconds else None


def run_detcli(name: str, tree: Path, data: Path, args, run_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    """`python -m detcli train` from `tree` (first on the path, so its own code and configs are used)
    with only the data, the length and the batch given (and the run's head, EXTRA_OVERRIDES, and `extra`,
    e.g. scripts/check_cpu_precision.py's trainer.precision=fp32): everything else is that version's default."""
    shutil.rmtree(run_dir, ignore_errors=True)  # the logs append: a stale run would be read back
    # the length: the steps, or (--wall-clock) the time limit with one evaluation, at its end
    length = ([f"trainer.time_limit={args.wall_clock:g}m", f"trainer.eval_interval={10**9}"] if args.wall_clock
              else [f"trainer.max_steps={args.steps}", f"trainer.eval_interval={args.steps}"])
    overrides = [*data_overrides(data), f"data.image_size={args.size}", f"data.batch_size={args.batch}",
                 *([f"data.num_workers={args.workers}"] if args.workers is not None else []),  # else auto
                 *([] if name in PRESETS or any(e.startswith("experiment=") for e in extra) else ["backbone=resnet18"]),
                 *length, f"trainer.device={args.device}", *EXTRA_OVERRIDES.get(name, []), *extra]
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    print(f"--- {name}: detcli {revision(tree)} in {tree}")
    cmd = [sys.executable, "-m", "detcli", "train", *overrides, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, check=False)  # cwd first on sys.path: this tree's detcli
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: detcli train exited {proc.returncode} (run folder {run_dir})")
    metrics = json.loads((run_dir / "eval_log.jsonl").read_text().splitlines()[-1])
    return {"map": metrics["map"], "map_50": metrics["map_50"], "map_75": metrics["map_75"], "wall_s": wall,
            "train_img_per_s": train_img_per_s(run_dir / "train_log.jsonl", args.batch),
            "steps": metrics["step"], "code": f"detcli {revision(tree)}", "run_dir": str(run_dir),
            "overrides": overrides}
