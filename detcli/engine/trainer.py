"""The training loop: `run_step` does one optimizer step; `fit` repeats it and calls the hooks
(detcli/engine/hooks.py: logging, evaluation and best.pt, last.pt, time budget, stop signal, a task's own)
at named points around it. One autocast block; fp16 adds a GradScaler.

Naming: B = images of a batch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from detcli.checkpoint import rng_state, rotate_save, set_rng_state
from detcli.device import autocast_dtype, describe_precision, resolve_precision
from detcli.engine import distributed
from detcli.engine.budget import TimeBudget, parse_duration
from detcli.engine.compile import compiled
from detcli.engine.hooks import (
    EvalHook,
    Hook,
    LastCheckpointHook,
    StopSignalHook,
    TimeBudgetHook,
    TrainLogHook,
)
from detcli.engine.loggers import NullLogger
from detcli.engine.optim import build_optimizer, lr_scale
from detcli.engine.progress import Progress
from detcli.engine.schedule import NAMES, build_scheduler, describe
from detcli.engine.signals import StopRequest
from detcli.errors import CheckpointError, ConfigError, DetcliError
from detcli.evaluation.evaluator import Evaluation
from detcli.models.detector import TrainingProgress

log = logging.getLogger(__name__)


def _validate(t: DictConfig) -> None:
    """Values that would otherwise fail deep inside the loop, named by their key."""
    for key in ("accumulate", "log_interval"):
        if int(t[key]) < 1:
            raise ConfigError(f"trainer.{key} must be at least 1, got {t[key]}.")
    if t.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"trainer.on_nonfinite must be stop or skip, got '{t.on_nonfinite}'.")
    if t.scheduler.name not in NAMES:
        raise ConfigError(f"trainer.scheduler.name must be one of {list(NAMES)}, got '{t.scheduler.name}'.")
    if t.max_steps is not None and int(t.max_steps) < 1:
        raise ConfigError(f"trainer.max_steps must be at least 1 (or null to use trainer.epochs), got {t.max_steps}.")
    parse_duration(t.get("time_limit"))


class NonFiniteLoss(DetcliError):
    pass


class Trainer:
    """Owns the model, optimizer, schedule, scaler, EMA and the loop position; `state_dict` /
    `load_state_dict` hold everything an exact resume needs. `hooks`: a task's own, run after the defaults."""

    def __init__(self, cfg: DictConfig, model: nn.Module, train_loader, val_loader, run_dir: Path, device,
                 meta: dict, logger=None, hooks: list[Hook] = ()):
        t = cfg.trainer
        self.cfg, self.t, self.meta = cfg, t, meta
        self.run_dir, self.device = Path(run_dir), device
        self.precision = resolve_precision(t.precision, device)  # trainer.precision=auto: this machine's
        self.dtype = autocast_dtype(self.precision)
        self.meta["precision"] = self.precision  # the checkpoints record what the run computed in
        # the evaluations run as `detcli eval` does: auto takes the inference rule (bf16 on a bf16 CPU)
        self.eval_precision = resolve_precision(t.precision, device, inference=True)
        log.info("precision: %s", describe_precision(t.precision, self.precision, device, self.eval_precision))
        model = model.to(device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if t.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.accumulate = int(t.accumulate)
        _validate(t)
        self.steps_per_epoch = train_loader.sampler.num_samples // train_loader.batch_size // self.accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={train_loader.batch_size} x trainer.accumulate={self.accumulate} is larger "
                f"than the training set ({len(train_loader.dataset)} images): lower the batch size."
            )
        self.total_steps = int(t.max_steps) if t.max_steps else int(t.epochs) * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        # trainer.time_limit: the length is what fits in the time (engine/budget.py); the configured one
        # stands in until the first steps are measured. Before the first evaluation is timed, it is guessed
        # as a training step per training batch of val images (room for postprocessing and the metric)
        limit = parse_duration(t.get("time_limit"))
        val_batches = len(val_loader.dataset) / max(1, train_loader.batch_size) if val_loader is not None else 0
        self.budget = TimeBudget(limit, eval_in_steps=val_batches) if limit else None
        self.configured_steps = self.total_steps
        self.model, self.net = distributed.wrap(model, device, t.sync_bn)
        if t.compile:
            self.net = compiled(self.net)
        self.logger = logger or NullLogger()
        self.world = distributed.ranks()
        global_batch = train_loader.batch_size * self.accumulate * self.world
        scale = lr_scale(t, global_batch)
        self.optimizer = build_optimizer(t.optimizer, self.model, scale)
        try:
            self.scheduler = build_scheduler(self.optimizer, lambda: self.total_steps, self.steps_per_epoch,
                                             t.scheduler)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        log.info("lr %g (%s), schedule: %s", self.optimizer.param_groups[0]["initial_lr"],
                 f"scaled x{scale:g} for the global batch {global_batch}" if scale != 1 else "as configured",
                 describe(self.total_steps, self.steps_per_epoch, t.scheduler) if not self.budget else
                 f"{t.scheduler.name} over the steps that fit in trainer.time_limit={t.time_limit} "
                 f"(estimated as it goes; trainer.epochs / max_steps are not used)")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ema = ModelEmaV3(self.model, decay=t.ema.decay, use_warmup=t.ema.warmup) if t.ema.enabled else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_map, self.bad_evals, self.skipped_steps = -1.0, 0, 0
        self.last_metrics: dict | None = None
        self.last_evaluation: Evaluation | None = None  # rank 0's latest, when a hook keeps it (the report)
        self.keep_evaluation = False
        self.eval_rng: list[dict] | None = None  # every rank's RNG state, gathered by this step's evaluation
        self.eval_started = self.evaluated_at = 0.0  # perf_counter around the latest evaluation and its saves
        self.finished = False  # early stopping ends the run
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = distributed.is_main_process()
        eval_interval = int(t.eval_interval) if t.eval_interval else self.steps_per_epoch
        self.hooks = [*([TimeBudgetHook(self.budget)] if self.budget else []), TrainLogHook(),
                      EvalHook(eval_interval), LastCheckpointHook(), StopSignalHook(), *hooks]

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        log.info("training steps %d..%s (%d per epoch), %s, %s", self.step + 1,
                 self.total_steps if not self.budget else f"the limit of {self.t.time_limit}",
                 self.steps_per_epoch, self.device, self.precision)
        batches = self.batches()
        with Progress(self.total_steps, self.step, enabled=self.main) as self.progress, \
                StopRequest() as self.stop_request:
            self._call("on_start")
            while self.step < self.total_steps and not self.finished:
                self._call("before_step")
                losses = self.run_step(batches)
                self.step += 1
                self._call("after_step", losses)
                self.progress.advance(self.step)
        self._call("on_end")
        out = {"step": self.step, "best_map": self.best_map, "last": self.last_metrics,
               "skipped_steps": self.skipped_steps}
        if self.budget:
            out["elapsed_s"] = self.budget.elapsed_s
        return out

    def _call(self, point: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    def run_step(self, batches) -> dict[str, Tensor] | None:
        """One optimizer step over `accumulate` batches; the detached loss terms, or None when the
        step was skipped for a non-finite loss (trainer.on_nonfinite=skip)."""
        self.net.train()
        totals: dict[str, Tensor] = {}
        for i in range(self.accumulate):
            batch = next(batches)
            if i == 0:  # after the first batch: a step that opens an epoch sees that epoch's phase
                self.model.progress = TrainingProgress(self.step, self.total_steps, self.epoch, self.epochs,
                                                       getattr(self.train_loader.dataset, "final_phase", False))
            images = batch["images"].to(self.device, non_blocking=True)  # (B, 3, H, W)
            if self.t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = {k: batch[k].to(self.device, non_blocking=True) for k in ("boxes", "labels", "image_sizes")}
            # under DDP, gradients are all-reduced once per step: at the last micro-batch's backward
            with distributed.no_sync(self.net, i < self.accumulate - 1):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    losses = self.net(images, targets)
                self.scaler.scale(sum(losses.values()) / self.accumulate).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0) + v.detach() / self.accumulate
        checked = dict(totals)
        if self.t.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.t.clip_grad_norm))  # ()
            if not self.scaler.is_enabled():  # fp16: the GradScaler skips the steps of non-finite gradients itself
                checked["grad_norm"] = norm
        if not self._finite(checked):  # checked once per step (one sync), before anything reaches the weights
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled() and self.t.clip_grad_norm:
                self.scaler.update()  # unscale_ ran: the scaler takes the inf it found and is ready again
            self.skipped_steps += 1
            self.scheduler.step()  # the schedule follows the step count, skipped or not
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return totals

    def _finite(self, losses: dict[str, Tensor]) -> bool:
        """One host sync per step: a non-finite loss (or, with clipping in fp32 / bf16, gradient norm
        `grad_norm`) must stop (or skip) before it reaches the weights."""
        loss = sum(losses.values())
        finite = distributed.reduce_min(torch.isfinite(loss).float().reshape(1))  # every rank takes the same decision
        if bool(finite):
            return True
        bad = {k: float(v) for k, v in losses.items() if not math.isfinite(float(v))} or {"loss (another rank)": math.nan}
        if self.t.on_nonfinite == "skip":
            log.warning("step %d: non-finite loss %s; step skipped (%d so far)", self.step + 1, bad,
                        self.skipped_steps + 1)
            return False
        precision = f", or run trainer.precision=fp32 (this run is {self.precision})" if self.precision != "fp32" else ""
        raise NonFiniteLoss(
            f"non-finite loss at step {self.step + 1}: {', '.join(f'{k}={v}' for k, v in bad.items())}. "
            f"Lower trainer.optimizer.lr, check the data (`data.*`), set trainer.on_nonfinite=skip{precision}."
        )

    def batches(self):
        """Training batches forever, epoch after epoch; each epoch's order and augmentation are fixed by
        (seed, epoch), and a resumed epoch starts at the batch where it stopped."""
        sampler = self.train_loader.sampler
        while True:
            sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.train_loader.batch_size)
            if hasattr(self.train_loader.dataset, "set_epoch"):  # e.g. mosaic off for the last epochs
                self.train_loader.dataset.set_epoch(self.epoch, self.epochs)
            for batch in self.train_loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def set_total(self, total: int) -> None:
        """A time-limited run's current estimate of its length."""
        self.total_steps = total
        self.epochs = math.ceil(total / self.steps_per_epoch)
        self.progress.set_total(total)

    def save(self, name: str, rng: list[dict], rotate: bool = True) -> None:
        """Rank 0 writes the checkpoint; `rng` holds every rank's RNG state (`rng_states`, a collective:
        gathered by all ranks before, as rank 0 alone saves after an evaluation)."""
        if self.main:
            rotate_save(self.state_dict(rng), self.ckpt_dir / name, keep_previous=rotate)

    def rng_states(self) -> list[dict]:
        """The RNG state of every rank, in rank order (samplers inside heads, dropout and augmentation draw
        from each process's own generators): all ranks must call it together."""
        return distributed.gather(rng_state())

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self, rng: list[dict] | None = None) -> dict:
        rng = rng or [rng_state()]
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_map": self.best_map,
            "bad_evals": self.bad_evals,
            "skipped_steps": self.skipped_steps,
            "metrics": self.last_metrics,
            "elapsed_s": self.budget.elapsed_s if self.budget else None,
            "total_steps": self.total_steps,
            "rng": rng[0],  # rank 0's (a resume with another number of processes takes it everywhere)
            "rng_per_rank": rng,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "meta": self.meta,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Everything from the checkpoint except the optimizer settings this command configures (lr,
        weight decay, ...): those are this run's, so that e.g. a lower lr given on resume holds."""
        old = ckpt["config"]["trainer"]["optimizer"]["_target_"]
        if old != self.t.optimizer._target_:
            raise CheckpointError(f"cannot resume: the checkpoint's optimizer is {old}, this config's is "
                                  f"{self.t.optimizer._target_}; keep trainer/optimizer as it was.")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"] or ckpt["model"])
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # parameter groups of another shape: frozen BN, other no-decay parameters
            raise CheckpointError(f"cannot resume: the checkpoint's optimizer state does not fit this model's "
                                  f"parameter groups ({e}); it was written by another detcli version or "
                                  f"another backbone setting (backbone.freeze_bn, freeze_at).") from e
        self.scheduler.load_state_dict(ckpt["scheduler"])
        for group, fresh in zip(self.optimizer.param_groups, settings):
            group.update(fresh)
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        if self.budget and ckpt.get("total_steps"):  # a time-limited run: the length it had reached
            self.total_steps = max(int(ckpt["total_steps"]), ckpt["step"])
            self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        factor = self.scheduler.lr_lambdas[0](ckpt["step"])
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        if ckpt["scaler"] and self.scaler.is_enabled():  # empty when the checkpoint's run had no GradScaler
            self.scaler.load_state_dict(ckpt["scaler"])
        before = ckpt.get("meta", {}).get("precision")
        if before and before != self.precision:  # e.g. trainer.precision=auto on another machine
            log.info("resuming in %s a run trained so far in %s (trainer.precision=%s)", self.precision, before,
                     self.t.precision)
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.best_map, self.bad_evals = ckpt["best_map"], ckpt.get("bad_evals", 0)
        self.skipped_steps, self.last_metrics = ckpt.get("skipped_steps", 0), ckpt.get("metrics")
        if self.budget and ckpt.get("elapsed_s") is not None:  # the clock goes on where it stopped
            self.budget.before_s = float(ckpt["elapsed_s"])
            # until this session's steps are measured, the length reached before stands in
            self.configured_steps = max(int(ckpt.get("total_steps") or self.configured_steps), ckpt["step"] + 2)
        per_rank, rank = ckpt.get("rng_per_rank") or [], distributed.rank()
        set_rng_state(per_rank[rank] if len(per_rank) == self.world else ckpt["rng"])
