"""Hydra callbacks."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table


class SweepSummary(Callback):
    """After `detcli train -m ...`: a table of every job's overrides and final validation mAP."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows = []
        for job in sorted((p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                          key=lambda p: (len(p.name), p.name)):
            overrides = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
            overrides = " ".join(o.removeprefix("- ") for o in overrides)
            evals = (job / "eval_log.jsonl").read_text().splitlines() if (job / "eval_log.jsonl").is_file() else []
            last = json.loads(evals[-1]) if evals else {}
            rows.append((job.name, overrides, last.get("map"), last.get("map_50")))
        table = Table(title=f"sweep {sweep}: final validation mAP per job")
        for col in ("job", "overrides", "mAP", "mAP50"):
            table.add_column(col, justify="right" if col.startswith("mAP") else "left")
        for name, overrides, m, m50 in rows:
            table.add_row(name, overrides, _fmt(m), _fmt(m50))
        Console(width=max(100, Console().width)).print(table)


def _fmt(v) -> str:
    return "failed" if v is None else f"{v:.4f}"
