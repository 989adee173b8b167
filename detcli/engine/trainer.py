"""The training loop: `run_step` does one optimizer step; `fit` repeats it and calls the logging,
evaluation and checkpoint hooks around it. One autocast block; fp16 adds a GradScaler."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from detcli.engine.budget import TimeBudget, parse_duration
from detcli.engine.checkpoint import rng_state, rotate_save, set_rng_state
from detcli.engine.evaluator import Evaluation, evaluation
from detcli.engine.loggers import NullLogger
from detcli.engine.progress import Progress
from detcli.engine.schedule import build_scheduler, describe
from detcli.engine.signals import StopRequest
from detcli.engine.thresholds import f1_thresholds
from detcli.engine.utils import (
    CPU_BF16_ENV,
    CPU_BF16_FLAGS,
    autocast_dtype,
    cpu_bf16,
    is_main_process,
    resolve_precision,
)
from detcli.errors import CheckpointError, ConfigError, DetcliError
from detcli.models.detector import TrainingProgress

log = logging.getLogger(__name__)


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
    from detcli.build import instantiate_group

    factory = instantiate_group("trainer.optimizer", opt_cfg)
    try:
        optimizer = factory(param_groups(model, float(opt_cfg.get("weight_decay", 0.0))))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer.optimizer: {opt_cfg._target_} does not accept these settings: {e}") from e
    for group in optimizer.param_groups:
        group["lr"] *= scale
    return optimizer


def _validate(t: DictConfig) -> None:
    """Values that would otherwise fail deep inside the loop, named by their key."""
    from detcli.engine.schedule import NAMES

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


def compiled(module: nn.Module) -> nn.Module:
    """torch.compile where it works; the eager module, with a warning, where it does not."""
    return _CompileOrEager(module)


class _CompileOrEager(nn.Module):
    """Runs the torch.compile'd module; on a compile failure (which shows at the first call) warns once
    and runs the eager module from then on."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, dynamic=True)
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any backend failure means eager
                self.failed = True
                log.warning("trainer.compile=true: torch.compile failed (%s: %s); training eagerly",
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return self.module(*args, **kwargs)


class Trainer:
    """Owns the model, optimizer, schedule, scaler, EMA and the loop position; `state_dict` /
    `load_state_dict` hold everything an exact resume needs."""

    def __init__(self, cfg: DictConfig, model: nn.Module, train_loader, val_loader, run_dir: Path, device,
                 meta: dict, logger=None):
        t = cfg.trainer
        self.cfg, self.t, self.meta = cfg, t, meta
        self.run_dir, self.device = Path(run_dir), device
        self.precision = resolve_precision(t.precision, device)  # trainer.precision=auto: this machine's
        self.dtype = autocast_dtype(self.precision)
        self.meta["precision"] = self.precision  # the checkpoints record what the run computed in
        # the evaluations run as `detcli eval` does: auto takes the inference rule (bf16 on a bf16 CPU)
        self.eval_precision = resolve_precision(t.precision, device, inference=True)
        log.info("precision: %s", describe_precision(t.precision, self.precision, device, self.eval_precision))
        self.model = model.to(device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if t.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.accumulate = int(t.accumulate)
        _validate(t)
        batches_per_epoch = train_loader.sampler.num_samples // train_loader.batch_size
        self.steps_per_epoch = batches_per_epoch // self.accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={train_loader.batch_size} x trainer.accumulate={self.accumulate} is larger "
                f"than the training set ({len(train_loader.dataset)} images): lower the batch size."
            )
        self.total_steps = int(t.max_steps) if t.max_steps else int(t.epochs) * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        # trainer.time_limit: the length is what fits in the time (engine/budget.py); the configured one
        # stands in until the first steps are measured
        limit = parse_duration(t.get("time_limit"))
        val_batches = len(val_loader.dataset) / max(1, train_loader.batch_size) if val_loader is not None else 0
        # before the first evaluation is timed, guess it as a training step per training batch of images (an
        # overestimate of the forward pass that leaves room for postprocessing and the metric)
        self.budget = TimeBudget(limit, eval_in_steps=val_batches) if limit else None
        self.configured_steps = self.total_steps
        self.net = self._wrap_ddp(self.model)
        if t.compile:
            self.net = compiled(self.net)
        self.logger = logger or NullLogger()
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
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
        self.last_evaluation: Evaluation | None = None  # rank 0's latest, with trainer.report
        self.eval_interval = int(t.eval_interval) if t.eval_interval else self.steps_per_epoch
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = is_main_process()
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._loss_names: list[str] = []
        self._since_log = (0, time.perf_counter())  # images, time

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if not (dist.is_available() and dist.is_initialized()):
            return model
        if self.t.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.model = model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ---- the step -------------------------------------------------------------------------------
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
            images = batch["images"].to(self.device, non_blocking=True)
            if self.t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = {k: batch[k].to(self.device, non_blocking=True) for k in ("boxes", "labels", "image_sizes")}
            # under DDP, gradients are all-reduced once per step: at the last micro-batch's backward
            with self._no_sync(i < self.accumulate - 1):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    losses = self.net(images, targets)
                self.scaler.scale(sum(losses.values()) / self.accumulate).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0) + v.detach() / self.accumulate
            self._since_log = (self._since_log[0] + images.shape[0], self._since_log[1])
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

    def _no_sync(self, skip: bool):
        """DDP's no_sync() for a micro-batch whose gradients are only accumulated; a no-op otherwise."""
        ddp = getattr(self.net, "module", None) if isinstance(self.net, _CompileOrEager) else self.net
        if skip and isinstance(ddp, nn.parallel.DistributedDataParallel):
            return ddp.no_sync()
        return contextlib.nullcontext()

    def _finite(self, losses: dict[str, Tensor]) -> bool:
        """One host sync per step: a non-finite loss (or, with clipping in fp32 / bf16, gradient norm
        `grad_norm`) must stop (or skip) before it reaches the weights."""
        loss = sum(losses.values())
        finite = torch.isfinite(loss).float()
        if dist.is_available() and dist.is_initialized():  # every rank must take the same decision
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
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

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        log.info("training steps %d..%s (%d per epoch), %s, %s", self.step + 1,
                 self.total_steps if not self.budget else f"the limit of {self.t.time_limit}",
                 self.steps_per_epoch, self.device, self.precision)
        batches = self.batches()
        if self.budget:
            self.budget.start()
        session_steps = 0
        with Progress(self.total_steps, self.step, enabled=self.main) as progress, StopRequest() as stop:
            self.progress = progress
            while self.step < self.total_steps:
                if self.budget:
                    self.set_total(self.budget.total_steps(self.step, self.configured_steps))
                losses = self.run_step(batches)
                self.step += 1
                session_steps += 1
                if self.budget:
                    self.budget.step_done(session_steps, self.step)
                if losses is not None:
                    self._accumulate_losses(losses)
                if self.step % int(self.t.log_interval) == 0 or self.step == self.total_steps:
                    self.log_train()
                progress.advance(self.step)
                if self.step % self.eval_interval == 0 or self.step == self.total_steps:
                    if self.evaluate_and_save():
                        break
                elif self.t.checkpoint_interval and self.step % int(self.t.checkpoint_interval) == 0:
                    self.save("last.pt", self.rng_states())
                if self._stop_everywhere(stop.requested, self.step % int(self.t.log_interval) == 0):
                    self.save("last.pt", self.rng_states())
                    progress.print(f"stopped by {stop.name} after step {self.step}; resume with resume=auto")
                    raise SystemExit(stop.exit_code if stop.requested else 143)
        self.logger.close()
        if self.main and self.t.get("report", True):
            self.write_report()
        out = {"step": self.step, "best_map": self.best_map, "last": self.last_metrics,
               "skipped_steps": self.skipped_steps}
        if self.budget:
            out["elapsed_s"] = self.budget.elapsed_s
        return out

    def write_report(self) -> None:
        """curves.png and report.html in the run folder (detcli/engine/report.py). The run is done and saved
        by now: a failure to draw the report is a warning, not a failed run."""
        from detcli.engine.report import write_report

        try:
            paths = write_report(self.run_dir, self.cfg, self.last_evaluation, self.meta["class_names"],
                                 getattr(self.val_loader, "dataset", None))
        except Exception as e:  # noqa: BLE001 - the checkpoints and logs stand without the report
            log.warning("trainer.report: the run's report could not be written (%s: %s)", type(e).__name__, e)
            return
        log.info("report: %s", ", ".join(str(p) for p in paths))

    def set_total(self, total: int) -> None:
        """A time-limited run's current estimate of its length (every rank takes the smallest: the ranks
        must stop after the same step)."""
        if dist.is_available() and dist.is_initialized():
            n = torch.tensor([total], device=self.device)
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            total = int(n.item())
        self.total_steps = total
        self.epochs = math.ceil(total / self.steps_per_epoch)
        self.progress.set_total(total)

    def _stop_everywhere(self, requested: bool, sync_now: bool) -> bool:
        """A signal reaches the ranks at different steps: they stop together after the same step, checked
        at log steps only (the log line syncs anyway), so DDP adds no host sync to other steps."""
        if not (dist.is_available() and dist.is_initialized()):
            return requested
        if not sync_now:
            return False
        flag = torch.tensor([float(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _accumulate_losses(self, losses: dict[str, Tensor]) -> None:
        stacked = torch.stack([v.float() for v in losses.values()])  # stays on the device: no sync
        self._loss_names = list(losses)
        self._loss_sum = stacked if self._loss_sum is None else self._loss_sum + stacked
        self._loss_count += 1

    def log_train(self) -> None:
        if self._loss_sum is None:
            return
        loss_sum = self._loss_sum / self._loss_count
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(loss_sum)
            loss_sum /= dist.get_world_size()
        means = loss_sum.tolist()  # the one host sync per log line
        terms = dict(zip(self._loss_names, means))
        images, t0 = self._since_log
        now = time.perf_counter()
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": sum(means), **terms,
                  "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": world * images / max(now - t0, 1e-9)}
        if self.budget:  # a time-limited run: its clock and its current estimate of the length
            record["elapsed_s"], record["total_steps"] = self.budget.elapsed_s, self.total_steps
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        record["peak_mem_gb"] = _peak_memory_gb(self.device)
        if self.main:
            _append_jsonl(self.run_dir / "train_log.jsonl", record)
            self.logger.log("train", record)
            self.progress.show(record)
        self._loss_sum, self._loss_count, self._since_log = None, 0, (0, time.perf_counter())

    def evaluate_and_save(self) -> bool:
        """Evaluate (every rank its share, metrics gathered), log and save last.pt / best.pt on rank 0, their
        meta["score_thresholds"] the F1-optimal per-class thresholds of this evaluation (predict's default);
        True when early stopping ends the run."""
        stop = False
        model = self.ema.module if self.ema is not None else self.model
        t0 = time.perf_counter()
        result = evaluation(model, self.val_loader, self.device, self.eval_precision, self.t.channels_last,
                            self.meta.get("class_names"))
        metrics = result.metrics
        num_classes = len(self.meta.get("class_names", []))  # F1-optimal score thresholds in label order, None:
        # the class falls back to predict's 0.3 (detcli/engine/thresholds.py)
        self.meta["score_thresholds"] = f1_thresholds(result.dets, result.gts, num_classes) if num_classes else []
        if self.main and self.t.get("report", True):  # kept whole for the end-of-training report
            self.last_evaluation = result
        rng = self.rng_states()  # every rank's, gathered here where all of them are
        if self.main:
            record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **metrics}
            _append_jsonl(self.run_dir / "eval_log.jsonl", record)
            self.logger.log("eval", record)
            self.progress.print(
                f"eval step {self.step}: mAP {metrics['map']:.4f}  mAP50 {metrics['map_50']:.4f}  "
                f"mAP75 {metrics['map_75']:.4f}  ({time.perf_counter() - t0:.1f}s)"
            )
            self.last_metrics = metrics
            if metrics["map"] > self.best_map:
                self.best_map, self.bad_evals = metrics["map"], 0
                self.save("best.pt", rng, rotate=False)
            else:
                self.bad_evals += 1
            self.save("last.pt", rng)
            if self.budget:  # evaluation and saving are paid from the budget: the final one is kept back
                self.budget.record_eval(time.perf_counter() - t0)
            patience = self.t.patience
            if patience and self.bad_evals >= int(patience):
                self.progress.print(f"early stop: no better val mAP in {patience} evaluations")
                stop = True
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(stop)], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        self._since_log = (0, time.perf_counter())  # evaluation time is not training throughput
        return stop

    def save(self, name: str, rng: list[dict], rotate: bool = True) -> None:
        """Rank 0 writes the checkpoint; `rng` holds every rank's RNG state (`rng_states`, a collective:
        gathered by all ranks before, as rank 0 alone saves after an evaluation)."""
        if self.main:
            rotate_save(self.state_dict(rng), self.ckpt_dir / name, keep_previous=rotate)

    def rng_states(self) -> list[dict]:
        """The RNG state of every rank, in rank order (samplers inside heads, dropout and augmentation draw
        from each process's own generators): all ranks must call it together."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng_state())
            return states
        return [rng_state()]

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
        per_rank, rank = ckpt.get("rng_per_rank") or [], dist.get_rank() if self.world > 1 else 0
        set_rng_state(per_rank[rank] if len(per_rank) == self.world else ckpt["rng"])


def describe_precision(configured: str, resolved: str, device: torch.device, evaluation: str | None = None) -> str:
    """The log line's words: what the run trains (and evaluates) in and, for trainer.precision=auto, why."""
    evals = f", evaluations in {evaluation}" if evaluation and evaluation != resolved else ""
    if configured != "auto":
        return f"{resolved}{evals} (trainer.precision={configured})"
    if device.type == "cpu":
        bf16 = cpu_bf16()
        why = ("training in fp32 on a CPU (bf16 training did not keep val mAP within 0.5 point in detcli's check); "
               + (f"evaluations in bf16: the CPU has bf16 instructions ({bf16})" if bf16 else
                  f"{CPU_BF16_ENV}=0" if os.environ.get(CPU_BF16_ENV, "").strip() == "0" else
                  f"the CPU lacks bf16 instructions ({' / '.join(CPU_BF16_FLAGS)})"))
        return f"{resolved}{evals} (trainer.precision=auto: {why}; trainer.precision=bf16 trains in bf16)"
    why = f"torch.cuda.is_bf16_supported() is {resolved == 'bf16'} on {device}"
    return f"{resolved}{evals} (trainer.precision=auto: {why}; trainer.precision=fp32 forces fp32)"


def _peak_memory_gb(device: torch.device) -> float:
    """CUDA's peak allocated memory on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
