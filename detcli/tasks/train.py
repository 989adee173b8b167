"""detcli train: build data and model from the config, train, evaluate, save checkpoints.
`resume=auto|PATH` continues a run exactly where its last checkpoint left it; `weights=...` starts from trained
weights (torchvision's COCO detectors, another run's checkpoint: detcli/weights/), what it loaded in weights.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from detcli.build import build_model, instantiate_group, prepare_for_weights
from detcli.checkpoint import load_with_fallback
from detcli.config import config_diff, default_config, diff_table
from detcli.data.collate import pad_value
from detcli.device import resolve_device, seed_everything
from detcli.engine.distributed import is_main_process, launch_torchrun, local_device, world_size
from detcli.engine.hooks import Hook
from detcli.engine.trainer import Trainer
from detcli.errors import CheckpointError
from detcli.tasks.common import command_overrides, log, overlay, run_dir, save_yaml
from detcli.visualization.report import write_report
from detcli.weights.transfer import transfer

# parts of the config that fix the model's structure: a resumed run must not change them
STRUCTURE = ("backbone", "neck", "head")
NOT_STRUCTURE = ("pretrained", "weights")


def run(cfg: DictConfig) -> float:
    out = run_dir()
    if int(cfg.trainer.devices) > 1 and world_size() == 1:
        return launch_torchrun(int(cfg.trainer.devices), out)
    ckpt = None
    found = find_checkpoint(str(cfg.resume), out) if cfg.resume else None
    if found is not None:
        ckpt, path = load_with_fallback(found)
        cfg = resumed_config(cfg, ckpt, path)
        if path.parent.name == "checkpoints" and path.name.startswith("last") and \
                (path.parent.parent / "config.yaml").is_file():
            out = path.parent.parent  # a run's own last.pt: keep writing into that run's folder
        log.info("resuming %s at step %d, writing to %s", path, ckpt["step"], out)
    weights = prepare_for_weights(cfg) if ckpt is None else None  # a resumed run has its own weights
    if is_main_process():
        save_yaml(cfg, out / "config.yaml")
        log.info("%s", diff_table(config_diff(default_config("train"), cfg)))
    seed_everything(int(cfg.seed))
    device = local_device(resolve_device(cfg.trainer.device))
    data = instantiate_group("data", cfg.data)
    if ckpt is not None and data.class_names != ckpt["meta"]["class_names"]:
        raise CheckpointError(f"cannot resume: the data's classes {data.class_names} differ from the "
                              f"checkpoint's {ckpt['meta']['class_names']}.")
    train_set, val_set = data.dataset("train"), data.dataset("val", data.cat_ids)
    model = build_model(cfg, num_classes=data.num_classes)
    meta = {"class_names": data.class_names, "cat_ids": data.cat_ids}
    if weights is not None:
        summary = transfer(model, weights, data.class_names)
        if is_main_process():
            (out / "weights.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info("data: %d train / %d val images, %d classes %s", len(train_set), len(val_set), data.num_classes,
             data.class_names)
    log.info("model: %s + %s + %s, %.2fM parameters", cfg.backbone.name, cfg.neck._target_.split(".")[-1],
             cfg.head._target_.split(".")[-1], sum(p.numel() for p in model.parameters()) / 1e6)
    rank, world = int(os.environ.get("RANK", "0")), world_size()
    logger = instantiate_group("logger", cfg.logger, run_dir=out) if is_main_process() else None
    pad = pad_value(model.pixel_mean)  # padding is 0 after the model's normalisation
    train_loader = data.train_loader(train_set, int(cfg.seed), rank, world, pad_value=pad, device=device)
    log.info("data loader: %d worker process(es) (data.num_workers=%s)", train_loader.num_workers, cfg.data.num_workers)
    trainer = Trainer(cfg, model, train_loader, data.val_loader(val_set, rank, world, pad_value=pad, device=device),
                      out, device, meta, logger,
                      hooks=[ReportHook()] if cfg.trainer.get("report", True) else [])
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    result = trainer.fit()
    if "elapsed_s" in result:
        log.info("trainer.time_limit=%s: %d steps in %.1f s", cfg.trainer.time_limit, result["step"],
                 result["elapsed_s"])
    log.info("done: best mAP %.4f; checkpoints in %s", result["best_map"], out / "checkpoints")
    return result["best_map"]


class ReportHook(Hook):
    """trainer.report: curves.png and report.html in the run folder at the end (detcli/visualization/report.py),
    from the run's logs and its last evaluation. The run is done and saved by then: a failure to draw the
    report is a warning, not a failed run."""

    def on_start(self, trainer: Trainer) -> None:
        trainer.keep_evaluation = True

    def on_end(self, trainer: Trainer) -> None:
        if not trainer.main:
            return
        try:
            paths = write_report(trainer.run_dir, trainer.cfg, trainer.last_evaluation, trainer.meta["class_names"],
                                 getattr(trainer.val_loader, "dataset", None))
        except Exception as e:  # noqa: BLE001 - the checkpoints and logs stand without the report
            log.warning("trainer.report: the run's report could not be written (%s: %s)", type(e).__name__, e)
            return
        log.info("report: %s", ", ".join(str(p) for p in paths))


def find_checkpoint(resume: str, out: Path) -> Path | None:
    """resume=PATH, or resume=auto: this run folder's last.pt, else the newest last.pt beside it, else
    None (nothing to resume: a fresh start, said in the log)."""
    if resume != "auto":
        return Path(resume).expanduser()
    own = out / "checkpoints" / "last.pt"
    if own.exists() or own.with_name("last.prev.pt").exists():
        return own
    runs = [p for p in out.parent.glob("*/checkpoints/last*.pt") if p.parent.parent != out]
    if not runs:
        log.info("resume=auto: no checkpoints/last.pt in %s or beside it; starting a new run", out)
        return None
    newest = max(runs, key=lambda p: p.stat().st_mtime)
    return newest.with_name("last.pt")


def resumed_config(cfg: DictConfig, ckpt: dict, path: Path) -> DictConfig:
    """The checkpoint's config with this command's overrides; refused when the model would change."""
    stored = OmegaConf.create(ckpt["config"])
    if "freeze_bn" not in stored.get("backbone", {}):  # written before the key existed: BatchNorm trained
        stored.backbone.freeze_bn = False
    overrides = command_overrides(exclude=("resume",))
    if any(o.split("=")[0].lstrip("+~") == "experiment" for o in overrides):
        merged = cfg  # a whole preset was named: the command line is complete
    else:
        merged = overlay(stored, cfg, overrides)
    merged.resume = cfg.resume
    diffs = [f"{k}: {a} -> {b}" for k, a, b in _differences(stored, merged)]
    if diffs:
        raise CheckpointError(f"cannot resume from '{path}': this config builds another model than the "
                              f"checkpoint's. Differing keys: {'; '.join(diffs)}.")
    return merged


def _differences(a: DictConfig, b: DictConfig):
    for part in STRUCTURE:
        x = OmegaConf.to_container(a.get(part, {}), resolve=True)
        y = OmegaConf.to_container(b.get(part, {}), resolve=True)
        for key in sorted(set(x) | set(y)):
            if key not in NOT_STRUCTURE and x.get(key) != y.get(key):
                yield f"{part}.{key}", x.get(key), y.get(key)

