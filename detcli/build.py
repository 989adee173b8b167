"""Config -> objects. Structural arguments (channels, strides, number of classes) are injected here,
from the part that knows them, so the YAML never repeats them; a model rebuilt from a checkpoint (`load_model`)."""

from __future__ import annotations

import inspect
import logging

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from detcli.checkpoint import load_checkpoint
from detcli.config import default_config
from detcli.device import resolve_device
from detcli.errors import CheckpointError, ConfigError, DetcliError
from detcli.models.backbones.timm import resolve_freeze_bn
from detcli.models.detector import Detector
from detcli.weights.source import PREFIX, Weights, read_weights
from detcli.weights.torchvision import weights_enum

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


def load_model(source: str, device: str = "auto", postprocess: DictConfig | dict | None = None,
               key: str = "checkpoint"):
    """(model in eval mode on its device, its config, meta, device) from a detcli checkpoint (`checkpoint=`) or
    any `weights=` (torchvision's COCO weights, a local file: detcli/weights/source.py, with the classes it was
    trained on); `postprocess` (a task's `postprocess.KEY=...`, "keep" = the model's) set over the model's own;
    `key`: the config key that named `source` (checkpoint, weights), for the messages."""
    weights = read_weights(source, key)
    cfg = model_config(weights)
    override_postprocess(cfg, postprocess or {}, source)
    # the weights hold every tensor: never fetch or read the backbone's initial weights again, but
    # build the BatchNorm layers (frozen or not) the way training did
    # (a checkpoint written before backbone.freeze_bn existed trained its BatchNorm)
    cfg.backbone.freeze_bn = resolve_freeze_bn(cfg.backbone.get("freeze_bn", False),
                                               cfg.backbone.get("pretrained", False), cfg.backbone.get("weights"))
    cfg.backbone.pretrained, cfg.backbone.weights = False, None
    # data_known: the config holds the data the model was trained on (not torchvision's composed one)
    meta = {"class_names": weights.class_names, "cat_ids": weights.cat_ids, **weights.meta,
            "data_known": weights.config is not None}
    model = build_model(cfg, num_classes=len(meta["class_names"]))
    missing, unexpected = model.load_state_dict(weights.state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"'{source}' does not fit the model its config describes: missing keys {missing[:8]}, unexpected "
            f"keys {unexpected[:8]}."
        )
    dev = resolve_device(device)
    return model.to(dev).eval(), cfg, meta, dev


def model_config(weights: Weights) -> DictConfig:
    """The config of the network `weights` are of: a detcli checkpoint's own, torchvision's architecture as
    detcli composes it (its groups, layers and inference settings over `detcli train`'s defaults)."""
    if weights.config is not None:
        return OmegaConf.create(weights.config)
    if weights.architecture is not None:
        cfg = default_config("train", weights.architecture.overrides())
        OmegaConf.set_struct(cfg, False)
        cfg.weights = weights.source
        return cfg
    raise ConfigError(f"weights='{weights.source}' is a bare state dict with no config: detcli cannot tell which "
                      f"network it is. Train from it (detcli train weights=... with the matching head and backbone) "
                      f"and use that run's best.pt.")


def model_source(cfg: DictConfig, task: str) -> tuple[str, str]:
    """(checkpoint= or weights= of an eval / predict / export command (one of them, not both), its key)."""
    checkpoint, weights = cfg.get("checkpoint"), cfg.get("weights")
    if checkpoint and weights:
        raise ConfigError(f"detcli {task}: give checkpoint=PATH or weights=..., not both.")
    if not checkpoint and not weights:
        raise ConfigError(f"detcli {task} needs checkpoint=PATH (a detcli checkpoint) or weights=... "
                          f"({PREFIX}<WeightsEnum>, e.g. {PREFIX}FCOS_ResNet50_FPN_Weights.COCO_V1, or a local "
                          f".pth / .safetensors).")
    return (str(checkpoint), "checkpoint") if checkpoint else (str(weights), "weights")


def prepare_for_weights(cfg: DictConfig) -> Weights | None:
    """`detcli train weights=...`: the weights, read once, after checking that the config builds the network
    they are of (a torchvision architecture's keys); the backbone's own ImageNet weights are not fetched (the
    weights replace them) and backbone.freeze_bn=auto freezes BatchNorm, as torchvision fine-tunes."""
    if not cfg.get("weights"):
        return None
    spec = str(cfg.weights)
    if spec.startswith(PREFIX):  # the network is known before the file is read (or downloaded)
        check_architecture(cfg, weights_enum(spec[len(PREFIX):])[1])
    weights = read_weights(spec)
    if weights.architecture is not None:
        check_architecture(cfg, weights.architecture)
    if cfg.backbone.get("pretrained"):
        log.info("weights=%s: backbone.pretrained is not fetched, the weights replace it", cfg.weights)
        cfg.backbone.pretrained = False
    if cfg.backbone.get("freeze_bn", "auto") == "auto":
        cfg.backbone.freeze_bn = True
    return weights


def check_architecture(cfg: DictConfig, arch) -> None:
    """Refuses a config that does not build torchvision's network `arch`, naming the keys to set."""
    wrong = {k: v for k, v in arch.requires.items() if _plain(OmegaConf.select(cfg, k)) != v}
    if wrong:
        have = "; ".join(f"{k}={_plain(OmegaConf.select(cfg, k))}" for k in wrong)
        want = " ".join(f"{k}={v}" for k, v in wrong.items())
        raise ConfigError(f"weights={cfg.weights} are torchvision's {arch.builder}: this config builds another "
                          f"network ({have}). Set {want} (head=... and backbone=... choose most of them), or start "
                          f"from a preset that does: experiment=finetune_fcos_r50 / experiment=finetune_faster_rcnn_r50.")


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


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
