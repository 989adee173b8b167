"""The training loop: `run_step` does one optimizer step; `fit` repeats it and calls the logging,
evaluation and checkpoint hooks around it. One autocast block; fp16 adds a GradScaler."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from detcli.engine.checkpoint import rng_state, save_checkpoint
from detcli.engine.evaluator import evaluate
from detcli.engine.progress import Progress
from detcli.engine.schedule import build_scheduler
from detcli.engine.utils import autocast_dtype
from detcli.errors import ConfigError, DetcliError

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and scalars (every parameter with fewer than 2 dims)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(opt_cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    from hydra.utils import instantiate

    factory = instantiate(opt_cfg)
    return factory(param_groups(model, float(opt_cfg.get("weight_decay", 0.0))))


class Trainer:
    def __init__(self, cfg: DictConfig, model: nn.Module, train_loader, val_loader, run_dir: Path, device,
                 meta: dict):
        t = cfg.trainer
        self.cfg, self.t, self.meta = cfg, t, meta
        self.run_dir, self.device = Path(run_dir), device
        self.dtype = autocast_dtype(t.precision)
        self.model = model.to(device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.accumulate = int(t.accumulate)
        self.steps_per_epoch = len(train_loader) // self.accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={train_loader.batch_size} x trainer.accumulate={self.accumulate} is larger "
                f"than the training set ({len(train_loader.dataset)} images): lower the batch size."
            )
        self.total_steps = int(t.max_steps) if t.max_steps else int(t.epochs) * self.steps_per_epoch
        self.optimizer = build_optimizer(t.optimizer, self.model)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.steps_per_epoch, t.scheduler)
        self.scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
        self.ema = ModelEmaV3(self.model, decay=t.ema.decay, use_warmup=t.ema.warmup) if t.ema.enabled else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_map = -1.0
        self.eval_interval = int(t.eval_interval) if t.eval_interval else self.steps_per_epoch
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._loss_sum: Tensor | None = None
        self._loss_names: list[str] = []
        self._since_log = (0, time.perf_counter())  # images, time

    # ---- the step -------------------------------------------------------------------------------
    def run_step(self, batches) -> dict[str, Tensor]:
        """One optimizer step over `accumulate` batches; returns the detached loss terms."""
        self.model.train()
        totals: dict[str, Tensor] = {}
        for _ in range(self.accumulate):
            batch = next(batches)
            images = batch["images"].to(self.device, non_blocking=True)
            if self.t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = {k: batch[k].to(self.device, non_blocking=True) for k in ("boxes", "labels")}
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                losses = self.model(images, targets)
            loss = sum(losses.values())
            self.scaler.scale(loss / self.accumulate).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0) + v.detach() / self.accumulate
            self._since_log = (self._since_log[0] + images.shape[0], self._since_log[1])
        if self.t.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.t.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return totals

    def batches(self):
        """Training batches forever, epoch after epoch, each epoch's order fixed by (seed, epoch)."""
        while True:
            self.train_loader.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.train_loader.batch_size)
            self.train_loader.generator.manual_seed(int(self.cfg.seed) * 1000 + self.epoch)
            for batch in self.train_loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        log.info("training %d steps (%d per epoch), %s, %s", self.total_steps, self.steps_per_epoch,
                 self.device, self.t.precision)
        batches = self.batches()
        with Progress(self.total_steps, self.step) as progress:
            self.progress = progress
            while self.step < self.total_steps:
                losses = self.run_step(batches)
                self.step += 1
                self._accumulate_losses(losses)
                if self.step % int(self.t.log_interval) == 0 or self.step == self.total_steps:
                    self.log_train()
                progress.advance(self.step)
                if self.step % self.eval_interval == 0 or self.step == self.total_steps:
                    self.evaluate_and_save()
        return {"step": self.step, "best_map": self.best_map, "last": self.last_metrics}

    def _accumulate_losses(self, losses: dict[str, Tensor]) -> None:
        stacked = torch.stack([v.float() for v in losses.values()])  # stays on the device: no sync
        self._loss_names = list(losses)
        self._loss_sum = stacked if self._loss_sum is None else self._loss_sum + stacked
        self._loss_count = getattr(self, "_loss_count", 0) + 1

    def log_train(self) -> None:
        means = (self._loss_sum / self._loss_count).tolist()  # the one host sync per log line
        terms = dict(zip(self._loss_names, means))
        total = sum(means)
        if not all(map(_finite, means)):
            bad = [k for k, v in terms.items() if not _finite(v)]
            raise DetcliError(f"non-finite loss at step {self.step}: {', '.join(bad)} = "
                              f"{[terms[k] for k in bad]}. Lower trainer.optimizer.lr or check the data.")
        images, t0 = self._since_log
        now = time.perf_counter()
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": total, **terms,
                  "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": images / max(now - t0, 1e-9)}
        _append_jsonl(self.run_dir / "train_log.jsonl", record)
        self.progress.show(record)
        self._loss_sum, self._loss_count, self._since_log = None, 0, (0, time.perf_counter())

    def evaluate_and_save(self) -> None:
        model = self.ema.module if self.ema is not None else self.model
        t0 = time.perf_counter()
        metrics = evaluate(model, self.val_loader, self.device, self.t.precision, self.t.channels_last)
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **metrics}
        _append_jsonl(self.run_dir / "eval_log.jsonl", record)
        self.progress.print(
            f"eval step {self.step}: mAP {metrics['map']:.4f}  mAP50 {metrics['map_50']:.4f}  "
            f"mAP75 {metrics['map_75']:.4f}  ({time.perf_counter() - t0:.1f}s)"
        )
        self.last_metrics = metrics
        state = self.state_dict()
        if metrics["map"] > self.best_map:
            self.best_map = metrics["map"]
            state["best_map"] = self.best_map
            save_checkpoint(state, self.ckpt_dir / "best.pt")
        save_checkpoint(state, self.ckpt_dir / "last.pt")
        self._since_log = (0, time.perf_counter())  # evaluation time is not training throughput

    def state_dict(self) -> dict:
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
            "metrics": getattr(self, "last_metrics", None),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "meta": self.meta,
        }


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
