"""data.num_workers=auto follows the CPUs this process may use, shared among torchrun's local processes;
an int still works, anything else is a ConfigError naming the key."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detcli.build import instantiate_group
from detcli.config import config_dir
from detcli.data import workers
from detcli.data.workers import worker_count
from detcli.errors import ConfigError


@pytest.mark.parametrize("cpus, local_world, expected", [
    (16, None, 8),  # capped
    (16, "4", 3),  # 4 CPUs per process, one of them for the process itself
    (6, None, 5),
    (1, None, 0),  # the process loads its own data
    (4, "8", 0),  # more processes than CPUs: never negative
])
def test_auto_shares_the_usable_cpus(monkeypatch, cpus, local_world, expected):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert worker_count("auto") == expected


@pytest.mark.parametrize("value", [0, 3, 12])
def test_an_int_is_kept(value):
    assert worker_count(value) == value


@pytest.mark.parametrize("value", [-1, "many", 2.5, True, None])
def test_a_wrong_value_names_the_key(value):
    with pytest.raises(ConfigError, match="data.num_workers"):
        worker_count(value)


PATHS = {"coco": [], "voc": ["data.root=/nowhere"], "yolo": ["data.yaml_file=/nowhere/data.yaml"]}


@pytest.mark.parametrize("data", ["coco", "voc", "yolo"])
def test_the_format_configs_default_to_auto(data, monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with initialize_config_dir(config_dir(), version_base=None):
        cfg = compose("train", overrides=[f"data={data}", *PATHS[data]])
        bad = compose("train", overrides=[f"data={data}", *PATHS[data], "data.num_workers=eight"])
        toy = compose("train", overrides=["experiment=toy"])
    assert cfg.data.num_workers == "auto" and instantiate(cfg.data).num_workers == 2
    with pytest.raises(ConfigError, match="data.num_workers"):
        instantiate_group("data", bad.data)
    assert isinstance(toy.data.num_workers, int)  # the toy preset keeps its own small value


def test_auto_is_no_worker_where_the_model_runs_on_a_cpu(monkeypatch):
    """On a CPU the model's threads use every core: the main process loads between steps (an int is kept)."""
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert worker_count("auto", device="cpu") == 0 and worker_count("auto", device="cuda:0") == 8
    assert worker_count(3, device="cpu") == 3
