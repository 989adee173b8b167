"""Progress on the terminal: a rich progress bar (step, ETA, and for training loss, lr, img/s) on a TTY, and
plain log lines when the output is a file or a pipe (CI logs stay readable). `label` names the task."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, label: str = "train"):
        self.console = Console(stderr=False)
        self.enabled = enabled
        self.live = self.console.is_terminal and enabled
        self.total = total
        self.bar = RichProgress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=self.console, disable=not self.live,
        )
        self.task = self.bar.add_task(label, total=total, completed=start, stats="")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def set_total(self, total: int) -> None:
        if total != self.total:
            self.total = total
            self.bar.update(self.task, total=total)

    def advance(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    def show(self, record: dict) -> None:
        stats = (f"epoch {record['epoch']:.2f}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                 f"{record['img_per_s']:.1f} img/s  peak {record.get('peak_mem_gb', 0):.2f} GB")
        if self.live:
            self.bar.update(self.task, stats=stats)
        else:
            terms = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss_"))
            self.print(f"step {record['step']}/{self.total}  {stats}  {terms}")

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.live:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stdout, flush=True)
