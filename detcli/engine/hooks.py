"""What the training loop does around its steps, one hook per job, called by `Trainer.fit` at named points:
`on_start` (before the first step), `before_step`, `after_step(trainer, losses)` and `on_end` (after the
last step of a run that was not stopped). The default hooks, in the order they run:

- TimeBudgetHook (with trainer.time_limit): the run's length from the measured step and evaluation times;
- TrainLogHook: loss terms averaged over `trainer.log_interval` steps, a train_log.jsonl record, the loggers;
- EvalHook: validation every `trainer.eval_interval` steps and at the end, eval_log.jsonl, best.pt, early stop;
- LastCheckpointHook: last.pt after each evaluation and every `trainer.checkpoint_interval` steps;
- StopSignalHook: SIGTERM / SIGINT: last.pt, then exit 143 / 130 (resume=auto continues);
a task adds its own (`detcli train`: the report at the end, detcli/visualization/report.py).

Naming: T = loss terms.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from detcli import runlog
from detcli.device import peak_memory_gb
from detcli.engine import distributed
from detcli.evaluation.evaluator import evaluation
from detcli.evaluation.thresholds import f1_thresholds


class Hook:
    """A no-op at every point; a hook overrides the points it acts at."""

    def on_start(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def after_step(self, trainer, losses: dict[str, Tensor] | None) -> None:
        pass

    def on_end(self, trainer) -> None:
        pass


def due(trainer, interval) -> bool:
    """Whether the step just done is a multiple of `interval` (0 / None: never) or the run's last."""
    return bool(interval) and trainer.step % int(interval) == 0 or trainer.step == trainer.total_steps


class TimeBudgetHook(Hook):
    """trainer.time_limit: the run's length is what fits in the time (detcli/engine/budget.py), re-estimated
    before each step; every rank takes the smallest estimate, so that they stop after the same step."""

    def __init__(self, budget):
        self.budget, self.session_steps = budget, 0

    def on_start(self, trainer) -> None:
        self.budget.start()

    def before_step(self, trainer) -> None:
        total = self.budget.total_steps(trainer.step, trainer.configured_steps)
        trainer.set_total(int(distributed.agree(total, "min", trainer.device)))

    def after_step(self, trainer, losses) -> None:
        self.session_steps += 1
        self.budget.step_done(self.session_steps, trainer.step)


class TrainLogHook(Hook):
    """The loss terms summed on the device (no host sync), averaged over the ranks and written every
    `trainer.log_interval` steps: train_log.jsonl, the loggers, the progress line. Throughput counts the
    training images since the last line, evaluations left out."""

    def __init__(self):
        self.total: Tensor | None = None  # (T,)
        self.count, self.names = 0, []
        self.images, self.since = 0, time.perf_counter()

    def after_step(self, trainer, losses) -> None:
        if trainer.evaluated_at > self.since:  # an evaluation ran since the last line: not training time
            self.images, self.since = 0, trainer.evaluated_at
        self.images += trainer.train_loader.batch_size * trainer.accumulate
        if losses is not None:
            stacked = torch.stack([v.float() for v in losses.values()])  # (T,), stays on the device
            self.names = list(losses)
            self.total = stacked if self.total is None else self.total + stacked
            self.count += 1
        if due(trainer, trainer.t.log_interval) and self.total is not None:
            self.write(trainer)

    def write(self, trainer) -> None:
        means = distributed.mean(self.total / self.count).tolist()  # the one host sync per log line
        now = time.perf_counter()
        record = {"step": trainer.step, "epoch": trainer.step / trainer.steps_per_epoch, "loss": sum(means),
                  **dict(zip(self.names, means)), "lr": trainer.optimizer.param_groups[0]["lr"],
                  "img_per_s": distributed.ranks() * self.images / max(now - self.since, 1e-9)}
        if trainer.budget:  # a time-limited run: its clock and its current estimate of the length
            record["elapsed_s"], record["total_steps"] = trainer.budget.elapsed_s, trainer.total_steps
        if trainer.skipped_steps:
            record["skipped_steps"] = trainer.skipped_steps
        record["peak_mem_gb"] = peak_memory_gb(trainer.device)
        if trainer.main:
            runlog.append(trainer.run_dir / runlog.TRAIN_LOG, record)
            trainer.logger.log("train", record)
            trainer.progress.show(record)
        self.total, self.count, self.images, self.since = None, 0, 0, time.perf_counter()

    def on_end(self, trainer) -> None:
        trainer.logger.close()


class EvalHook(Hook):
    """Every `trainer.eval_interval` steps (default: each epoch) and at the end: the EMA model (else the
    model) on the val set, every rank its share; on rank 0 eval_log.jsonl, the loggers, best.pt when the mAP
    improves, and early stopping after `trainer.patience` evaluations without. The checkpoints' meta gets
    the F1-optimal per-class score thresholds of this evaluation (predict's default)."""

    def __init__(self, interval: int):
        self.interval = interval

    def after_step(self, trainer, losses) -> None:
        if not due(trainer, self.interval):
            return
        t0 = time.perf_counter()
        model = trainer.ema.module if trainer.ema is not None else trainer.model
        result = evaluation(model, trainer.val_loader, trainer.device, trainer.eval_precision,
                            trainer.t.channels_last, trainer.meta.get("class_names"))
        metrics, num_classes = result.metrics, len(trainer.meta.get("class_names", []))
        # None for a class: predict's 0.3 (detcli/evaluation/thresholds.py)
        trainer.meta["score_thresholds"] = f1_thresholds(result.dets, result.gts, num_classes) if num_classes else []
        trainer.last_evaluation = result if trainer.keep_evaluation and trainer.main else None
        trainer.eval_rng = trainer.rng_states()  # every rank's, gathered here where all of them are
        stop = False
        if trainer.main:
            record = {"step": trainer.step, "epoch": trainer.step / trainer.steps_per_epoch, **metrics}
            runlog.append(trainer.run_dir / runlog.EVAL_LOG, record)
            trainer.logger.log("eval", record)
            trainer.progress.print(f"eval step {trainer.step}: mAP {metrics['map']:.4f}  mAP50 {metrics['map_50']:.4f}"
                                   f"  mAP75 {metrics['map_75']:.4f}  ({time.perf_counter() - t0:.1f}s)")
            trainer.last_metrics = metrics
            if metrics["map"] > trainer.best_map:
                trainer.best_map, trainer.bad_evals = metrics["map"], 0
                trainer.save("best.pt", trainer.eval_rng, rotate=False)
            else:
                trainer.bad_evals += 1
            patience = trainer.t.patience
            if patience and trainer.bad_evals >= int(patience):
                trainer.progress.print(f"early stop: no better val mAP in {patience} evaluations")
                stop = True
        trainer.finished = bool(distributed.agree(stop, "main", trainer.device))
        trainer.eval_started = t0


class LastCheckpointHook(Hook):
    """last.pt (the previous one kept as last.prev.pt) after each evaluation, with the RNG states gathered
    there, and every `trainer.checkpoint_interval` steps between evaluations. With a time budget, an
    evaluation and its saves are timed here, once both are done."""

    def after_step(self, trainer, losses) -> None:
        if trainer.eval_rng is not None:
            trainer.save("last.pt", trainer.eval_rng)
            if trainer.budget and trainer.main:  # an evaluation and its saves are paid from the time budget
                trainer.budget.record_eval(time.perf_counter() - trainer.eval_started)
            trainer.evaluated_at = time.perf_counter()
        elif trainer.t.checkpoint_interval and trainer.step % int(trainer.t.checkpoint_interval) == 0:
            trainer.save("last.pt", trainer.rng_states())
        trainer.eval_rng = None


class StopSignalHook(Hook):
    """SIGTERM / SIGINT (detcli/engine/signals.py): the ranks stop together after the same step (checked at
    log steps, whose line syncs anyway, so DDP adds no host sync elsewhere), save last.pt and exit."""

    def after_step(self, trainer, losses) -> None:
        stop = trainer.stop_request
        sync_now = trainer.step % int(trainer.t.log_interval) == 0
        requested = stop.requested if not distributed.active() else \
            sync_now and bool(distributed.agree(stop.requested, "max", trainer.device))
        if requested:
            trainer.save("last.pt", trainer.rng_states())
            trainer.progress.print(f"stopped by {stop.name} after step {trainer.step}; resume with resume=auto")
            raise SystemExit(stop.exit_code if stop.requested else 143)
