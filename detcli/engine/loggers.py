"""Extra metric sinks beside train_log.jsonl / eval_log.jsonl (which are always written):
`logger=csv`, `logger=tensorboard`, and the experiment trackers `logger=mlflow` and `logger=wandb`
(the run's config.yaml as parameters, every record as metrics, best.pt as an artifact). Rank 0 only."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from detcli.errors import ConfigError

MLFLOW_PARAM_CHARS = 500  # the shortest parameter value length any mlflow>=2 tracking store accepts


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


class MLflowLogger(NullLogger):
    """An MLflow run: the run's config.yaml as flattened parameters (and as an artifact), train/* and
    val/* metrics per step, checkpoints/best.pt as an artifact at the end. The tracking store is a
    local file store in RUN/mlruns unless `tracking_uri` names another (a server: http://host:5000)."""

    def __init__(self, run_dir: Path, tracking_uri: str | None = None, experiment: str = "detcli",
                 run_name: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ConfigError("logger=mlflow needs the mlflow package: pip install detcli[mlflow].") from e
        self.run_dir = Path(run_dir).resolve()
        uri = tracking_uri or f"file:{self.run_dir / 'mlruns'}"
        if uri.startswith("file:"):  # mlflow>=3.7 refuses file stores unless asked for them
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(exp_id, run_name=run_name or self.run_dir.name,
                                                 tags={"detcli.run_dir": str(self.run_dir)}).info.run_id
        except Exception as e:  # an unreachable server or a bad URI, named by its key
            raise ConfigError(f"logger.tracking_uri='{uri}': cannot start an MLflow run: {e}") from e
        self._log_config()

    def _log_config(self) -> None:
        from mlflow.entities import Param

        config = self.run_dir / "config.yaml"
        if not config.is_file():
            return
        flat = flatten(OmegaConf.to_container(OmegaConf.load(config)))
        params = [Param(k, str(v)[:MLFLOW_PARAM_CHARS]) for k, v in flat.items()]
        for i in range(0, len(params), 100):  # mlflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_artifact(self.run_id, str(config))

    def log(self, kind: str, record: dict) -> None:
        from mlflow.entities import Metric

        prefix, now = ("train" if kind == "train" else "val"), int(time.time() * 1000)
        metrics = [Metric(f"{prefix}/{k}", float(v), now, int(record["step"])) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        best = self.run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")
        self.client.set_terminated(self.run_id)


class WandbLogger(NullLogger):
    """A Weights & Biases run in RUN/wandb: offline (sync later with `wandb sync RUN/wandb/offline-run-*`)
    unless `mode` (or WANDB_MODE) says online; the config, train/* and val/* metrics per step, and
    checkpoints/best.pt as a model artifact at the end."""

    def __init__(self, run_dir: Path, project: str = "detcli", entity: str | None = None, mode: str | None = None,
                 run_name: str | None = None):
        try:
            import wandb
        except ImportError as e:
            raise ConfigError("logger=wandb needs the wandb package: pip install detcli[wandb].") from e
        self.wandb, self.run_dir = wandb, Path(run_dir).resolve()
        mode = mode or os.environ.get("WANDB_MODE") or "offline"
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode must be offline, online or disabled, got '{mode}'.")
        config = self.run_dir / "config.yaml"
        params = OmegaConf.to_container(OmegaConf.load(config)) if config.is_file() else {}
        try:
            self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(self.run_dir), config=params,
                                  name=run_name or self.run_dir.name)
        except Exception as e:  # not logged in, no network: named by its keys
            raise ConfigError(f"logger=wandb (project '{project}', mode '{mode}'): cannot start a run: {e}") from e

    def log(self, kind: str, record: dict) -> None:
        prefix = "train" if kind == "train" else "val"
        self.run.log({f"{prefix}/{k}": v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                     step=int(record["step"]))

    def close(self) -> None:
        best = self.run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(best))
            self.run.log_artifact(artifact)
        self.run.finish()


def flatten(node, prefix: str = "") -> dict:
    """{"trainer.optimizer.lr": 0.01, ...} from a nested config; lists stay one value."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
