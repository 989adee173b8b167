"""Hydra callbacks: the sweep summary of `detcli train -m ...`.

Each job of a sweep leaves `job.json` in its folder (number, status, overrides, wall time, error);
the sweep folder's `summary.csv` (one row per job) is rewritten after every job and at the end of the
sweep, so it is complete even when a launcher (SLURM) runs the jobs elsewhere or the sweep is cut off.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from detcli import runlog

COLUMNS = ("job", "status", "overrides", "best_map", "map", "map_50", "wall_s", "run_dir", "error")

# errors of the jobs this process ran, by job folder: a failed job returns None to the sweeper (which
# would stop the sweep on an exception), and its callback reads the error from here
_FAILED: dict[str, str] = {}
# failed jobs of the last sweep this process summarised (the CLI's exit status)
last_sweep_failures = 0


def job_failed(output_dir: str, error: BaseException) -> None:
    """Record that the job writing into `output_dir` failed with `error` (its first line is kept)."""
    _FAILED[str(Path(output_dir).resolve())] = _first_line(error)


class SweepSummary(Callback):
    """After `detcli train -m ...`: summary.csv and a table of every job's status, overrides and mAP."""

    def __init__(self) -> None:
        self._start = time.time()

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        self._start = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        out = Path(config.hydra.runtime.output_dir).resolve()
        error = _FAILED.pop(str(out), None)
        if job_return.status == JobStatus.FAILED:
            error = error or _first_line(job_return._return_value)
        record = {"job": int(config.hydra.job.num), "status": "failed" if error else "completed",
                  "overrides": list(job_return.overrides or []), "wall_s": round(time.time() - self._start, 2),
                  "error": error or ""}
        _write_atomic(out / "job.json", json.dumps(record, indent=1))
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global last_sweep_failures
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        rows = write_summary(sweep)
        last_sweep_failures = sum(r["status"] != "completed" for r in rows)
        table = Table(title=f"sweep {sweep}: validation mAP per job (all in {sweep / 'summary.csv'})")
        for col in ("job", "status", "overrides", "best mAP", "final mAP", "mAP50", "wall s"):
            table.add_column(col, justify="left" if col in ("status", "overrides") else "right")
        common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
        for r in rows:  # the table shows what differs between the jobs, summary.csv every override
            overrides = " ".join(o for o in r["overrides"] if o not in common)
            table.add_row(str(r["job"]), r["status"], overrides, _fmt(r["best_map"]), _fmt(r["map"]),
                          _fmt(r["map_50"]), _fmt(r["wall_s"], 1))
        Console(width=max(100, Console().width)).print(table)
        for r in rows:
            if r["error"]:
                print(f"job {r['job']} failed: {r['error']}")


def write_summary(sweep: Path) -> list[dict]:
    """summary.csv in the sweep folder from its job folders; returns the rows (overrides as lists)."""
    rows = sorted((job_row(p) for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda r: (r["job"] if isinstance(r["job"], int) else 1 << 30, str(r["job"])))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else " ".join(r[k]) if k == "overrides" else r[k] for k in COLUMNS})
    _write_atomic(sweep / "summary.csv", buf.getvalue())
    return rows


def job_row(job: Path) -> dict:
    """One job folder's row: its job.json (absent: the job has not finished, or was killed) and the
    best and final validation mAP of its eval_log.jsonl."""
    record = json.loads((job / "job.json").read_text()) if (job / "job.json").is_file() else {}
    if "overrides" not in record:
        lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
        record["overrides"] = [line.removeprefix("- ") for line in lines]
    evals = runlog.eval_log(job)
    last = evals[-1] if evals else {}
    return {"job": record.get("job", int(job.name) if job.name.isdigit() else job.name),
            "status": record.get("status", "unfinished"), "overrides": record["overrides"],
            "best_map": max((e["map"] for e in evals), default=None), "map": last.get("map"),
            "map_50": last.get("map_50"), "wall_s": record.get("wall_s"), "run_dir": str(job),
            "error": record.get("error", "")}


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename: jobs running at once on a cluster never leave a half-written file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
