"""What the tasks share: the run folder, a command's overrides over a checkpoint's config, saving it."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("detcli")


def run_dir() -> Path:
    """Hydra's output folder for this job (hydra.run.dir, or the sweep subdir under -m)."""
    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_overrides(exclude: tuple[str, ...] = ()) -> list[str]:
    """This command's key=value overrides (Hydra's own and `exclude`d keys left out)."""
    out = []
    for o in HydraConfig.get().overrides.task:
        key = o.split("=", 1)[0].lstrip("+~")
        if not key.startswith("hydra") and key.split(".")[0] not in exclude:
            out.append(o)
    return out


def overlay(stored: DictConfig, current: DictConfig, overrides: list[str]) -> DictConfig:
    """`stored` (a checkpoint's config) with the keys this command overrode taken from `current`.
    A group choice (`data=coco`, `trainer/optimizer=adamw`) takes that whole node."""
    out = OmegaConf.create(OmegaConf.to_container(stored))
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~").replace("/", ".")
        value = OmegaConf.select(current, key)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value)
        OmegaConf.update(out, key, value, force_add=True, merge=False)
    return out


def data_config(cfg: DictConfig, ckpt_cfg: DictConfig) -> DictConfig:
    """The checkpoint's data config with this command's `data=...` / `data.KEY=...` overrides on top."""
    overrides = [o for o in command_overrides() if o.lstrip("+~").split("=")[0].split(".")[0] == "data"]
    return overlay(OmegaConf.create({"data": ckpt_cfg.data}), cfg, overrides).data


def save_yaml(cfg: DictConfig, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
