"""Config -> objects. Structural arguments (channels, strides, number of classes) are injected here,
from the part that knows them, so the YAML never repeats them; a model rebuilt from a checkpoint (`load_model`)."""

from __future__ import annotations

import inspect
import logging

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from detcli.checkpoint import inference_weights, load_checkpoint
from detcli.device import resolve_device
from detcli.errors import CheckpointError, ConfigError, DetcliError
from detcli.models.backbones.timm import resolve_freeze_bn
from detcli.models.detector import Detector

log = logging.getLogger("detcli")


def instantiate_group(group: str, node: DictConfig, **kwargs):
    """hydra.utils.instantiate, with a failure that names the config group and its _target_."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DetcliError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        raise ConfigError(f"{group}: could not build '{target}': {cause or e}") from e


def accepts(node: DictConfig, argument: str) -> bool:
    """Whether the callable a config node's _target_ names takes `argument` (a structural argument is
    injected only where a component asks for it)."""
    try:
        target = get_object(node["_target_"])
    except Exception:  # noqa: BLE001 - a bad _target_ is reported by instantiate_group, naming the group
        return False
    return argument in inspect.signature(target).parameters


def loss_arguments(loss_cfg: DictConfig, num_classes: int, strides: list[int]) -> dict:
    """The structural arguments of a criterion: the number of classes, and the strides for its
    assigner when the assigner takes them (FCOS's ranges do, SimOTA reads each point's stride)."""
    kwargs = {"num_classes": num_classes}
    assigner = loss_cfg.get("assigner")
    if assigner is not None and accepts(assigner, "strides"):
        kwargs["assigner"] = {"strides": strides}
    return kwargs


def build_model(cfg: DictConfig, num_classes: int) -> Detector:
    backbone = instantiate_group("backbone", cfg.backbone)
    neck = instantiate_group("neck", cfg.neck, in_channels=backbone.out_channels, in_strides=backbone.strides)
    strides = list(neck.strides)
    head = instantiate_group(
        "head", cfg.head, in_channels=neck.out_channels, strides=strides, num_classes=num_classes
    )
    criterion = instantiate_group("loss", cfg.loss, **loss_arguments(cfg.loss, num_classes, strides))
    postprocess = instantiate_group("postprocess", cfg.postprocess, num_classes=num_classes)
    return Detector(backbone, neck, head, criterion, postprocess)


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
