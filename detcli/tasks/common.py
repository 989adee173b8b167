"""What the tasks share: the run folder, and rebuilding a model from a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from detcli.build import build_model
from detcli.engine.checkpoint import inference_weights, load_checkpoint
from detcli.engine.utils import resolve_device
from detcli.errors import CheckpointError

log = logging.getLogger("detcli")


def run_dir() -> Path:
    """Hydra's output folder for this job (hydra.run.dir, or the sweep subdir under -m)."""
    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_model(checkpoint: str, device: str = "auto"):
    """(model in eval mode on its device, checkpoint config, checkpoint meta) from a detcli checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(ckpt["config"])
    meta = ckpt["meta"]
    model = build_model(cfg, num_classes=len(meta["class_names"]))
    missing, unexpected = model.load_state_dict(inference_weights(ckpt), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' does not fit the model its config describes: missing keys "
            f"{missing[:8]}, unexpected keys {unexpected[:8]}."
        )
    dev = resolve_device(device)
    return model.to(dev).eval(), cfg, meta, dev


def data_config(cfg: DictConfig, ckpt_cfg: DictConfig) -> DictConfig:
    """The checkpoint's data config with this command's `data=...` / `data.KEY=...` overrides on top."""
    overrides = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith("data")]
    if any(o.split("=")[0].lstrip("+") == "data" for o in overrides):
        return cfg.data  # a whole data config was chosen on the command line
    data = OmegaConf.create(OmegaConf.to_container(ckpt_cfg.data))
    for o in overrides:
        key = o.split("=")[0].lstrip("+")[len("data."):]
        OmegaConf.update(data, key, OmegaConf.select(cfg.data, key), force_add=True)
    return data


def save_yaml(cfg: DictConfig, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
