"""Learning-rate schedules as a pure function of the step, so resuming (or lengthening) a run only
needs the step number.

factor(step) = warmup(step) * decay(step) (detectron2's semantics: the warmup ramps whatever the
decay says at that step, so a milestone inside the warmup is never skipped or applied twice).
- warmup: linear from `warmup_factor` to 1 over `warmup_steps` (or `warmup_epochs`); `auto` = a third of the run, at most 1000
  steps (a detector trained from scratch needs its first steps at a low lr: measured in
  scripts/bench_accuracy.py, a 5 % warmup leaves FCOS's box loss stuck); an explicit length longer than
  half the run is capped there, with a warning.
- decay: cosine to `min_lr_ratio`, multistep (`milestones` as fractions of the run in (0, 1), or epochs
  for numbers >= 1), onecycle (a cosine rise over `pct_start`, then a cosine fall), or constant.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

NAMES = ("cosine", "multistep", "onecycle", "constant")
AUTO_WARMUP_FRACTION, AUTO_WARMUP_MAX, WARMUP_CAP_FRACTION = 1 / 3, 1000, 0.5


def warmup_steps(cfg: DictConfig, total_steps: int, steps_per_epoch: int = 1) -> int:
    """The warmup length this run uses (see the module docstring); `warmup_epochs`, when set, gives it in
    epochs instead (YOLOX: 5)."""
    epochs = cfg.get("warmup_epochs")
    value = round(float(epochs) * steps_per_epoch) if epochs is not None else cfg.get("warmup_steps", "auto")
    if value is None or value == "auto":
        return min(AUTO_WARMUP_MAX, round(AUTO_WARMUP_FRACTION * total_steps))
    if isinstance(value, str) or int(value) < 0:
        raise ValueError(f"trainer.scheduler.warmup_steps must be auto or a number of steps >= 0, got '{value}'")
    return min(int(value), int(WARMUP_CAP_FRACTION * total_steps))


def milestone_steps(milestones, total_steps: int, steps_per_epoch: int) -> list[int]:
    """Milestones in (0, 1) are fractions of the run; numbers >= 1 are epochs."""
    out = []
    for m in milestones:
        m = float(m)
        if m <= 0:
            raise ValueError(f"trainer.scheduler.milestones must be > 0 (fractions of the run or epochs), got {m}")
        out.append(round(m * total_steps) if m < 1 else round(m * steps_per_epoch))
    return out


def decay_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: DictConfig) -> float:
    if cfg.name == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "onecycle":  # cosine rise from warmup_factor to 1, then cosine fall to min_lr_ratio
        rise = max(1, int(cfg.get("pct_start", 0.3) * total_steps))
        if step < rise:
            return cfg.warmup_factor + (1 - cfg.warmup_factor) * 0.5 * (1 - math.cos(math.pi * step / rise))
        progress = min(1.0, (step - rise) / max(1, total_steps - rise))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "multistep":
        passed = sum(step >= m for m in milestone_steps(cfg.milestones, total_steps, steps_per_epoch))
        return cfg.gamma**passed
    return 1.0


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: DictConfig) -> float:
    if cfg.name not in NAMES:
        raise ValueError(f"trainer.scheduler.name must be one of {NAMES}, got '{cfg.name}'")
    factor = decay_factor(step, total_steps, steps_per_epoch, cfg)
    warmup = 0 if cfg.name == "onecycle" else warmup_steps(cfg, total_steps, steps_per_epoch)  # onecycle: its rise
    if step < warmup:
        alpha = step / warmup
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def describe(total_steps: int, steps_per_epoch: int, cfg: DictConfig) -> str:
    """One line for the log: what the schedule does over this run."""
    warmup = 0 if cfg.name == "onecycle" else warmup_steps(cfg, total_steps, steps_per_epoch)
    text = f"{cfg.name} over {total_steps} steps, warmup {warmup} steps"
    if cfg.name == "multistep":
        text += f", x{cfg.gamma} at steps {milestone_steps(cfg.milestones, total_steps, steps_per_epoch)}"
    elif cfg.name in ("cosine", "onecycle"):
        text += f", down to {cfg.min_lr_ratio} x lr"
    return text


def check(cfg: DictConfig, total_steps: int, steps_per_epoch: int) -> None:
    """Raise ValueError for settings that cannot work, warn for ones that silently would not fit the run."""
    lr_factor(0, total_steps, steps_per_epoch, cfg)
    key = "warmup_epochs" if cfg.get("warmup_epochs") is not None else "warmup_steps"
    value = cfg.get(key, "auto")
    asked = round(float(value) * steps_per_epoch) if key == "warmup_epochs" else value
    if asked not in (None, "auto") and int(asked) > WARMUP_CAP_FRACTION * total_steps:
        log.warning("trainer.scheduler.%s=%s is more than half of the %d-step run: capped at %d steps",
                    key, value, total_steps, warmup_steps(cfg, total_steps, steps_per_epoch))
    if cfg.name == "multistep":
        late = [m for m, s in zip(cfg.milestones, milestone_steps(cfg.milestones, total_steps, steps_per_epoch))
                if s >= total_steps]
        if late:
            log.warning("trainer.scheduler.milestones %s fall after the end of the %d-step run (%d steps per "
                        "epoch): the lr never decays there; give fractions of the run, e.g. [0.67, 0.92]",
                        late, total_steps, steps_per_epoch)


def build_scheduler(optimizer, total_steps: int | Callable[[], int], steps_per_epoch: int,
                    cfg: DictConfig) -> LambdaLR:
    """total_steps: the run's length, or a function giving it at each step (a time-limited run's estimate,
    engine/budget.py: the schedule is laid out over the current estimate)."""
    total = total_steps if callable(total_steps) else (lambda: total_steps)
    check(cfg, total(), steps_per_epoch)
    return LambdaLR(optimizer, lambda step: lr_factor(step, total(), steps_per_epoch, cfg))
