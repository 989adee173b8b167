"""A run folder's logs, one JSON record per line: train_log.jsonl (a record per logged step) and
eval_log.jsonl (one per validation). Every read and write of them goes through here: the trainer appends,
the report, `detcli compare`, the sweep summary and the sweepers read.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_log.jsonl"


def append(path: Path, record: dict) -> None:
    """One record at the end of the log at `path` (created if absent)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read(path: Path) -> list[dict]:
    """The records of a log; none when it is absent. A line cut short (a killed run) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def train_log(run_dir: Path) -> list[dict]:
    return read(Path(run_dir) / TRAIN_LOG)


def eval_log(run_dir: Path) -> list[dict]:
    return read(Path(run_dir) / EVAL_LOG)


def best_map(run_dir: Path) -> float:
    """The best validation mAP in a run folder's eval_log.jsonl (-1 without evaluations), the value a
    sweeper (optuna) maximises, also when the training ran in torchrun's processes."""
    return max((float(r["map"]) for r in eval_log(run_dir) if "map" in r), default=-1.0)
