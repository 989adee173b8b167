"""Config -> objects. Structural arguments (channels, strides, number of classes) are injected here,
from the part that knows them, so the YAML never repeats them."""

from __future__ import annotations

import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from detcli.errors import ConfigError, DetcliError
from detcli.models.detector import Detector


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
