"""Learning-rate schedules as a pure function of the step, so resuming (or lengthening) a run only
needs the step number: linear warmup, then cosine, multistep or constant."""

from __future__ import annotations

import math

from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR

NAMES = ("cosine", "multistep", "onecycle", "constant")


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: DictConfig) -> float:
    if cfg.name not in NAMES:
        raise ValueError(f"trainer.scheduler.name must be one of {NAMES}, got '{cfg.name}'")
    warmup = int(cfg.warmup_steps)
    if cfg.name == "onecycle":  # cosine rise from warmup_factor to 1, then cosine fall to min_lr_ratio
        rise = max(1, int(cfg.get("pct_start", 0.3) * total_steps))
        if step < rise:
            return cfg.warmup_factor + (1 - cfg.warmup_factor) * 0.5 * (1 - math.cos(math.pi * step / rise))
        warmup = rise
    if step < warmup:
        alpha = step / warmup
        return cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.name in ("cosine", "onecycle"):
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "multistep":
        passed = sum(step >= m * steps_per_epoch for m in cfg.milestones)
        return cfg.gamma**passed
    return 1.0


def build_scheduler(optimizer, total_steps: int, steps_per_epoch: int, cfg: DictConfig) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, cfg))
