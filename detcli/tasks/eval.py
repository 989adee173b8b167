"""detcli eval checkpoint=PATH: COCO metrics of a checkpoint on the val set; writes metrics.json."""

from __future__ import annotations

import json

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from detcli.build import instantiate_group
from detcli.engine.evaluator import METRIC_KEYS, evaluate
from detcli.tasks.common import data_config, load_model, run_dir


def run(cfg: DictConfig) -> float:
    out = run_dir()
    model, ckpt_cfg, meta, device = load_model(cfg.checkpoint, cfg.device)
    data_cfg = data_config(cfg, ckpt_cfg)
    if cfg.batch_size:
        data_cfg.val_batch_size = int(cfg.batch_size)
    data = instantiate_group("data", data_cfg)
    loader = data.val_loader(data.dataset("val", meta["cat_ids"]))
    metrics = evaluate(model, loader, device)
    result = {"checkpoint": str(cfg.checkpoint), "images": len(loader.dataset), **metrics}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"COCO metrics, {len(loader.dataset)} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in METRIC_KEYS:
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
    print(f"metrics written to {out / 'metrics.json'}")
    return metrics["map"]
