"""detcli train: build data and model from the config, train, evaluate, save checkpoints."""

from __future__ import annotations

from omegaconf import DictConfig

from detcli.build import build_model, instantiate_group
from detcli.engine.trainer import Trainer
from detcli.engine.utils import resolve_device, seed_everything
from detcli.tasks.common import log, run_dir, save_yaml


def run(cfg: DictConfig) -> float:
    out = run_dir()
    save_yaml(cfg, out / "config.yaml")
    seed_everything(int(cfg.seed))
    device = resolve_device(cfg.trainer.device)
    data = instantiate_group("data", cfg.data)
    train_set = data.dataset("train")
    val_set = data.dataset("val", data.cat_ids)
    model = build_model(cfg, num_classes=data.num_classes)
    meta = {"class_names": data.class_names, "cat_ids": data.cat_ids}
    log.info("data: %d train / %d val images, %d classes %s", len(train_set), len(val_set), data.num_classes,
             data.class_names)
    log.info("model: %s + %s + %s, %.2fM parameters", cfg.backbone.name, cfg.neck._target_.split(".")[-1],
             cfg.head._target_.split(".")[-1], sum(p.numel() for p in model.parameters()) / 1e6)
    trainer = Trainer(cfg, model, data.train_loader(train_set, int(cfg.seed)), data.val_loader(val_set), out,
                      device, meta)
    result = trainer.fit()
    log.info("done: best mAP %.4f; checkpoints in %s", result["best_map"], out / "checkpoints")
    return result["best_map"]

