"""Extra metric sinks beside train_log.jsonl / eval_log.jsonl (which are always written):
`logger=csv` and `logger=tensorboard`. Rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path

from detcli.errors import ConfigError


class NullLogger:
    def __init__(self, run_dir: Path | None = None):
        pass

    def log(self, kind: str, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class CSVLogger(NullLogger):
    """train_log.csv and eval_log.csv; the header is the first record's keys."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.files: dict = {}

    def log(self, kind: str, record: dict) -> None:
        if kind not in self.files:
            path = self.run_dir / f"{kind}_log.csv"
            f = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
            writer = csv.DictWriter(f, fieldnames=list(record), extrasaction="ignore")
            if path.stat().st_size == 0:
                writer.writeheader()
            self.files[kind] = (f, writer)
        f, writer = self.files[kind]
        writer.writerow(record)
        f.flush()

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()


class TensorBoardLogger(NullLogger):
    """Scalars under train/* and val/* in the run folder's tb/ (tensorboard --logdir RUN/tb)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install tensorboard.") from e
        self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, kind: str, record: dict) -> None:
        prefix = "train" if kind == "train" else "val"
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}/{k}", v, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
