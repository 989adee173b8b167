"""What the tasks share: the run folder, and rebuilding a model from a checkpoint."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from detcli.build import build_model
from detcli.engine.checkpoint import inference_weights, load_checkpoint
from detcli.engine.utils import resolve_device
from detcli.errors import CheckpointError, ConfigError
from detcli.models.backbones.timm import resolve_freeze_bn

log = logging.getLogger("detcli")


def run_dir() -> Path:
    """Hydra's output folder for this job (hydra.run.dir, or the sweep subdir under -m)."""
    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_checkpoint_config(checkpoint: str) -> tuple[DictConfig, dict]:
    """(config, meta) stored in a detcli checkpoint, without building its model."""
    ckpt = load_checkpoint(checkpoint)
    return OmegaConf.create(ckpt["config"]), ckpt["meta"]


def load_model(checkpoint: str, device: str = "auto", postprocess: DictConfig | dict | None = None):
    """(model in eval mode on its device, checkpoint config, checkpoint meta) from a detcli checkpoint;
    `postprocess` (a task's `postprocess.KEY=...`, "keep" = the checkpoint's) set over the checkpoint's own."""
    ckpt = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(ckpt["config"])
    override_postprocess(cfg, postprocess or {}, checkpoint)
    # the checkpoint holds every weight: never fetch or read the backbone's initial weights again, but
    # build the BatchNorm layers (frozen or not) the way training did
    # (a checkpoint written before backbone.freeze_bn existed trained its BatchNorm)
    cfg.backbone.freeze_bn = resolve_freeze_bn(cfg.backbone.get("freeze_bn", False),
                                               cfg.backbone.get("pretrained", False), cfg.backbone.get("weights"))
    cfg.backbone.pretrained, cfg.backbone.weights = False, None
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


def override_postprocess(cfg: DictConfig, keys: DictConfig | dict, checkpoint: str) -> None:
    """Sets a task's `postprocess.KEY=VALUE` (all but "keep") over the checkpoint config's postprocess: eval,
    predict and export try another NMS threshold or box voting on a trained model without training again."""
    keys = {k: v for k, v in dict(keys).items() if v != "keep"}
    if not keys:
        return
    target = get_class(cfg.postprocess._target_)
    allowed = set(inspect.signature(target).parameters) - {"num_classes"}
    if unknown := sorted(set(keys) - allowed):
        raise ConfigError(f"postprocess.{unknown[0]}: the model of checkpoint '{checkpoint}' has no such postprocess "
                          f"key ({target.__name__}); its keys: {', '.join(sorted(allowed))}.")
    cfg.postprocess = OmegaConf.merge(cfg.postprocess, keys)
    log.info("postprocess over the checkpoint's: %s", ", ".join(f"{k}={v}" for k, v in keys.items()))


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
