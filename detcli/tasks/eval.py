"""detcli eval checkpoint=PATH: COCO metrics of a checkpoint on the val set; writes metrics.json.

The val labels follow the checkpoint's classes (by id for COCO, by name for VOC / YOLO). Defects of the
val set are counted in metrics.json (`val_defects`, `val_note`): data.on_bad never rewrites its ground
truth, and the note says what the metric had to leave out."""

from __future__ import annotations

import json

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from detcli.build import instantiate_group
from detcli.data.collate import pad_value
from detcli.engine.evaluator import METRIC_KEYS, evaluate
from detcli.tasks.common import data_config, load_model, run_dir


def run(cfg: DictConfig) -> float:
    out = run_dir()
    model, ckpt_cfg, meta, device = load_model(cfg.checkpoint, cfg.device)
    data_cfg = data_config(cfg, ckpt_cfg)
    if cfg.batch_size:
        data_cfg.val_batch_size = int(cfg.batch_size)
    data = instantiate_group("data", data_cfg)
    dataset = data.dataset("val", meta["cat_ids"], meta.get("class_names"))
    loader = data.val_loader(dataset, pad_value=pad_value(model.pixel_mean))  # padded as in training
    metrics = evaluate(model, loader, device)
    result = {"checkpoint": str(cfg.checkpoint), "images": len(dataset), **metrics,
              "val_defects": len(dataset.defects), "val_note": dataset.defect_note}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"COCO metrics, {len(dataset)} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in METRIC_KEYS:
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
    if dataset.defect_note:
        print(dataset.defect_note)
    print(f"metrics written to {out / 'metrics.json'}")
    return metrics["map"]
