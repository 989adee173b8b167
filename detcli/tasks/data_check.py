"""detcli data check data=...: statistics and every defect of a dataset, with file and line / id.
Exits 1 when there are defects, so scripts can gate on it."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from detcli.build import instantiate_group
from detcli.data.checks import report
from detcli.errors import ConfigError
from detcli.tasks.common import run_dir


def run(cfg: DictConfig) -> int:
    out = run_dir()
    console = Console()
    data = instantiate_group("data", cfg.data)
    found, summary = [], {}
    for split in cfg.splits:
        try:
            records, _, defects = data.checked_split(split, data.cat_ids, decode=True)
        except ConfigError as e:
            console.print(f"[yellow]{split}: skipped ({e})")
            continue
        summary[split] = statistics(records, data.class_names)
        console.print(stats_table(split, summary[split]))
        found += [(split, d) for d in defects]
    (out / "data_check.json").write_text(json.dumps({
        "summary": summary, "defects": [{"split": s, "file": d.file, "where": d.where, "problem": d.problem}
                                        for s, d in found]}, indent=1) + "\n")
    if not found:
        console.print("[green]no defects found")
        return 0
    console.print(report([d for _, d in found], "defects", limit=len(found)), markup=False, highlight=False)
    console.print(f"written {out / 'data_check.json'}; train with data.on_bad=skip or data.on_bad=clip to "
                  f"leave them out or clip them")
    sys.exit(1)


def statistics(records: list, names: list[str]) -> dict:
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, dtype=np.int64)
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4))
    area = np.nan_to_num((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    sizes = np.array([(r.width, r.height) for r in records]).reshape(-1, 2)
    per_class = Counter(int(v) for v in labels)
    return {
        "images": len(records),
        "images_without_boxes": sum(len(r.labels) == 0 for r in records),
        "boxes": len(labels),
        "boxes_per_class": {n: per_class.get(i, 0) for i, n in enumerate(names)},
        "box_sizes": {"small (<32^2)": int((area < 32**2).sum()),
                      "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
                      "large (>=96^2)": int((area >= 96**2).sum())},
        "image_size_min": sizes.min(0).tolist() if len(sizes) else None,
        "image_size_max": sizes.max(0).tolist() if len(sizes) else None,
    }


def stats_table(split: str, s: dict) -> Table:
    table = Table(title=f"{split}: {s['images']} images, {s['boxes']} boxes")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("images without boxes", str(s["images_without_boxes"]))
    for name, n in s["boxes_per_class"].items():
        table.add_row(f"boxes of {name}", str(n))
    for name, n in s["box_sizes"].items():
        table.add_row(f"{name} boxes", str(n))
    table.add_row("image size min (w, h)", str(s["image_size_min"]))
    table.add_row("image size max (w, h)", str(s["image_size_max"]))
    return table
