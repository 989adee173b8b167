"""The optimizer of a run: parameter groups (no weight decay on norms, biases and scalars), the linear lr
scaling rule, and `trainer.optimizer` built over them. Shared by the trainer and `detcli bench`."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from detcli.build import instantiate_group
from detcli.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and scalars (every parameter with fewer than 2 dims), nor on the
    parameters a submodule lists in `no_weight_decay()` (e.g. a Swin backbone's position tables)."""
    exempt = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            exempt |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in exempt else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_scale(t: DictConfig, global_batch: int) -> float:
    """trainer.scale_lr: the linear scaling rule, global batch / trainer.base_batch_size; else 1."""
    if not t.get("scale_lr", False):
        return 1.0
    base = int(t.get("base_batch_size", 16))
    if base < 1:
        raise ConfigError(f"trainer.base_batch_size must be at least 1, got {base}.")
    return global_batch / base


def build_optimizer(opt_cfg: DictConfig, model: nn.Module, scale: float = 1.0) -> torch.optim.Optimizer:
    factory = instantiate_group("trainer.optimizer", opt_cfg)
    try:
        optimizer = factory(param_groups(model, float(opt_cfg.get("weight_decay", 0.0))))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer.optimizer: {opt_cfg._target_} does not accept these settings: {e}") from e
    for group in optimizer.param_groups:
        group["lr"] *= scale
    return optimizer
