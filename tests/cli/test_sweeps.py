"""Sweeps and experiment trackers: summary.csv, failed jobs, the optuna sweeper, the SLURM launcher's
config, and the mlflow / wandb loggers on the toy data."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, detcli
from hydra import compose as compose_config
from hydra import initialize_config_dir

from detcli import cli
from detcli.sweeps import write_summary


def read_summary(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_summary_lists_unfinished_jobs_and_best_and_final_map(tmp_path):
    for num, evals in ((0, [0.2, 0.5, 0.4]), (1, [])):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- trainer.optimizer.lr=0.0{num + 1}\n")
        (job / "eval_log.jsonl").write_text("".join(json.dumps({"step": i, "map": m, "map_50": 2 * m}) + "\n"
                                                    for i, m in enumerate(evals)))
    (tmp_path / "0" / "job.json").write_text(json.dumps({"job": 0, "status": "completed", "wall_s": 12.5,
                                                          "overrides": ["trainer.optimizer.lr=0.01"], "error": ""}))
    (tmp_path / ".submitit").mkdir()  # a launcher's own folder is no job
    write_summary(tmp_path)
    rows = read_summary(tmp_path)
    assert list(rows[0]) == ["job", "status", "overrides", "best_map", "map", "map_50", "wall_s", "run_dir", "error"]
    assert [r["job"] for r in rows] == ["0", "1"]
    assert rows[0]["status"] == "completed" and float(rows[0]["best_map"]) == 0.5
    assert float(rows[0]["map"]) == 0.4 and float(rows[0]["map_50"]) == 0.8 and float(rows[0]["wall_s"]) == 12.5
    assert rows[1]["status"] == "unfinished" and rows[1]["overrides"] == "trainer.optimizer.lr=0.02"
    assert rows[1]["best_map"] == "" and rows[1]["run_dir"] == str(tmp_path / "1")


def test_a_failed_job_is_a_failed_row_and_the_sweep_goes_on(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = detcli("train", "-m", *TINY, "trainer.max_steps=2", "trainer.log_interval=0,1",
                  f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "trainer.log_interval must be at least 1" in proc.stderr
    rows = read_summary(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed")]
    assert rows[0]["error"] == "trainer.log_interval must be at least 1, got 0." and rows[0]["best_map"] == ""
    assert "trainer.log_interval=1" in rows[1]["overrides"] and 0 <= float(rows[1]["best_map"]) <= 1
    assert float(rows[1]["wall_s"]) > 0 and (sweep / "1" / "checkpoints" / "best.pt").is_file()


def test_optuna_sweep_maximises_the_returned_map(tmp_path, cache_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    # the file's search space, with the lr range narrowed on the command line
    detcli("train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *TINY, "trainer.max_steps=2",
           "trainer.optimizer.lr=tag(log, interval(0.001, 0.01))", f"hydra.sweep.dir={sweep}")
    rows = read_summary(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    lrs = [float(o.split("=")[1]) for r in rows for o in r["overrides"].split() if o.startswith("trainer.optimizer.lr=")]
    assert len(lrs) == 2 and lrs[0] != lrs[1] and all(0.001 <= lr <= 0.01 for lr in lrs)
    assert all("trainer.optimizer.weight_decay=" in r["overrides"] for r in rows)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(float(r["best_map"]) for r in rows)


def compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose_config("train", overrides=list(overrides), return_hydra_config=True)


def test_optuna_search_space_and_slurm_launcher_compose():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    hydra = compose("hparams_search=optuna", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                    "hydra.launcher.gpus_per_node=4", "trainer.devices=4").hydra
    assert hydra.sweeper.direction == "maximize" and "trainer.optimizer.lr" in hydra.sweeper.params
    assert hydra.sweeper._target_.endswith("OptunaSweeper") and hydra.sweeper.max_failure_rate == 1.0
    assert hydra.launcher._target_.endswith("SlurmLauncher") and hydra.launcher.gpus_per_node == 4
    assert hydra.launcher.partition == "gpu"


def test_a_missing_plugin_names_the_extra(monkeypatch):
    """Also where no Hydra plugin at all is installed (the parent package is missing, which find_spec raises on)."""
    monkeypatch.setitem(cli.PLUGINS, "hydra/launcher/submitit_", ("no_such_package.no_such_launcher", "slurm"))
    error = cli.check_overrides("train", ["-m", "hydra/launcher=submitit_slurm", "trainer.optimizer.lr=0.1,0.2"])
    assert "pip install detcli[slurm]" in error and "hydra/launcher/submitit_slurm" in error


@pytest.mark.parametrize("logger", ["mlflow", "wandb"])
def test_tracker_loggers_compose_with_commented_keys(logger):
    text = (ROOT / "configs" / "logger" / f"{logger}.yaml").read_text()
    assert f"pip install detcli[{logger}]" in text and "run_name: null" in text
    target = compose(f"logger={logger}").logger._target_
    assert target == f"detcli.engine.loggers.{'MLflowLogger' if logger == 'mlflow' else 'WandbLogger'}"


def test_mlflow_logger_leaves_a_run_mlflow_reads_back(tmp_path, cache_dir, monkeypatch):
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    run = tmp_path / "run"
    detcli("train", *TINY, "logger=mlflow", "trainer.max_steps=2", "trainer.log_interval=1", f"hydra.run.dir={run}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow_tracking.MlflowClient(tracking_uri=f"file:{run / 'mlruns'}")
    (found,) = client.search_runs([client.get_experiment_by_name("detcli").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["trainer.max_steps"] == "2" and found.data.params["backbone.name"] == "resnet10t"
    losses = client.get_metric_history(found.info.run_id, "train/loss")
    train_log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [(m.step, m.value) for m in losses] == [(r["step"], pytest.approx(r["loss"])) for r in train_log]
    final = json.loads((run / "eval_log.jsonl").read_text().splitlines()[-1])
    assert found.data.metrics["val/map_50"] == pytest.approx(final["map_50"])
    assert [a.path for a in client.list_artifacts(found.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert "config.yaml" in [a.path for a in client.list_artifacts(found.info.run_id)]


@pytest.mark.slow  # wandb's service process takes tens of seconds to start and to finish a run
def test_wandb_logger_writes_an_offline_run(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    detcli("train", *TINY, "logger=wandb", "trainer.max_steps=2", "trainer.log_interval=1", f"hydra.run.dir={run}")
    (record,) = run.glob("wandb/offline-run-*/run-*.wandb")  # offline by default: nothing leaves the machine
    data = record.read_bytes()  # protobuf records: the metric names, config keys and artifact file verbatim
    for text in (b"train/loss", b"val/map", b"optimizer", b"best.pt"):
        assert text in data
