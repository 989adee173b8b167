"""detcli data check data=... [head=...]: statistics and every defect of a dataset, with file and line / id, the
box statistics as plots, and the scale fit of the data to the configured detector (detcli/evaluation/scale_fit.py).
Exits 1 when there are defects, so scripts can gate on it."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from detcli.build import instantiate_group
from detcli.data.checks import apply_policy, report
from detcli.data.duplicates import duplicate_boxes, find_duplicates
from detcli.data.tiles import Tiling, tile_records
from detcli.data.transforms import image_size_of
from detcli.errors import ConfigError, DetcliError
from detcli.evaluation import scale_fit
from detcli.tasks.common import run_dir
from detcli.visualization.pairs import duplicate_pairs
from detcli.visualization.plots import box_statistics


def run(cfg: DictConfig) -> int:
    out = run_dir()
    console = Console()
    data = instantiate_group("data", cfg.data)
    found, summary, checked, files, everything = [], {}, {}, {}, {}
    for split in cfg.splits:
        try:
            records, root, defects = data.checked_split(split, data.cat_ids, decode=True)
        except ConfigError as e:
            console.print(f"[yellow]{split}: skipped ({e})")
            continue
        summary[split] = statistics(records, data.class_names)
        console.print(stats_table(split, summary[split]))
        found += [(split, d) for d in defects]
        files[split], everything[split] = [root / r.file_name for r in records], records
        # the plots and the scale fit see the data as training would: defects left out (or clipped, data.on_bad=clip)
        policy = data.on_bad if data.on_bad in ("skip", "clip") else "skip"
        checked[split] = apply_policy(records, defects, policy, f"{split} (plots and scale fit)")
        if cfg.plots and checked[split]:
            box_statistics(checked[split], data.class_names, split, out / f"box_stats_{split}.png")
            console.print(f"box statistics: {out / f'box_stats_{split}.png'}")
    result = {"summary": summary, "defects": [{"split": s, "file": d.file, "where": d.where, "problem": d.problem}
                                              for s, d in found]}
    leaks = 0
    if cfg.duplicates.enabled and files:
        result["duplicates"] = duplicates_report(cfg, data, files, everything, summary, console, out)
        leaks = sum(n for where, n in result["duplicates"]["counts"].items() if "-" in where)
    if cfg.scale_fit.enabled:
        try:
            result["scale_fit"] = scale_fit_report(cfg, checked, data, console)
        except DetcliError as e:  # a detector the config cannot build: the data report still comes out
            console.print(f"[yellow]scale fit: skipped, the detector could not be built: {e}")
    (out / "data_check.json").write_text(json.dumps(result, indent=1) + "\n")
    if leaks:
        console.print(f"[red]{leaks} duplicate pairs across splits (leakage); listed in {out / 'data_check.json'}; "
                      f"data.on_bad=skip leaves the train side out of training")
    if not found:
        console.print("[green]no defects found")
        if leaks:
            sys.exit(1)
        return 0
    console.print(report([d for _, d in found], "defects", limit=len(found)), markup=False, highlight=False)
    console.print(f"written {out / 'data_check.json'}; train with data.on_bad=skip or data.on_bad=clip to "
                  f"leave them out or clip them")
    sys.exit(1)


def duplicates_report(cfg: DictConfig, data, files: dict, records: dict, summary: dict, console: Console,
                      out) -> dict:
    """Duplicate images within and across the splits, duplicate boxes, val classes the train split lacks
    (detcli/data/duplicates.py): printed, drawn (duplicates.png) and returned for data_check.json."""
    found = find_duplicates(files, data.duplicates, data.hash_cache, int(cfg.workers))
    found["duplicate_boxes"] = [{"split": split, **b} for split, recs in records.items()
                                for b in duplicate_boxes(recs, data.class_names)]
    train, val = summary.get("train"), summary.get("val")
    found["val_classes_missing_from_train"] = [
        n for n in data.class_names if val and train and val["boxes_per_class"][n] and not train["boxes_per_class"][n]]
    table = Table(title=f"duplicates ({found['method']}, distance <= {found['max_distance']}; {found['images']} images, "
                        f"{found['hashed_now']} hashed in {found['seconds']:.1f} s)")
    table.add_column("")
    table.add_column("count", justify="right")
    for where in [*files, *(w for w in found["counts"] if "-" in w)]:
        label = f"duplicate pairs within {where}" if "-" not in where else f"duplicate pairs across {where} (leakage)"
        table.add_row(label, str(found["counts"].get(where, 0)))
    table.add_row("duplicate boxes (same class, IoU >= 0.95)", str(len(found["duplicate_boxes"])))
    table.add_row("val classes without train boxes", ", ".join(found["val_classes_missing_from_train"]) or "0")
    console.print(table)
    if cfg.plots and (drawn := duplicate_pairs(found["pairs"], out / "duplicates.png", int(cfg.duplicates.pairs_drawn))):
        console.print(f"closest duplicate pairs: {drawn}")
    return found


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


def scale_fit_report(cfg: DictConfig, checked: dict, data, console: Console) -> dict | None:
    """The recall ceiling of the configured detector on the scale-fit split, per class and size, and the
    tried changes sorted by the ceiling they reach; printed, and returned for data_check.json."""
    sf = cfg.scale_fit
    records = checked.get(sf.split)
    if not records:
        console.print(f"[yellow]scale fit: no '{sf.split}' images to fit (scale_fit.split)")
        return None
    if sf.max_images and len(records) > sf.max_images:
        pick = np.random.default_rng(0).choice(len(records), int(sf.max_images), replace=False)
        records = [records[i] for i in sorted(pick)]
    num_classes = len(data.class_names)
    base = scale_fit.fit(cfg, records, num_classes)
    table = base.table(data.class_names)
    head = str(cfg.head._target_).rsplit(".", 1)[-1].removesuffix("Head")
    what = (f"head {head}, neck {str(cfg.neck._target_).rsplit('.', 1)[-1]}, data.image_size "
            f"{OmegaConf.to_container(cfg.data.image_size) if not isinstance(cfg.data.image_size, int) else cfg.data.image_size}")
    console.print(fit_table(f"scale fit ({what}): recall ceiling on {len(records)} {sf.split} images", table))
    tried = []
    changes = scale_fit.candidates(cfg, OmegaConf.to_container(sf.tries)) if base.ceiling < 1.0 else []
    for key, value in changes:
        try:
            ceiling = scale_fit.fit(scale_fit.with_change(cfg, key, value), records, num_classes).ceiling
        except Exception as e:  # noqa: BLE001 - a change the head refuses (e.g. ranges for fewer levels) is reported
            console.print(f"[yellow]scale fit: {scale_fit.override(key, value)} could not be tried: {e}")
            continue
        tried.append({"change": scale_fit.override(key, value), "ceiling": round(ceiling, 4)})
    tried.sort(key=lambda t: -t["ceiling"])
    tiles = tiling_fit(cfg, records, num_classes, base.ceiling, console)
    best = tried[0] if tried and tried[0]["ceiling"] > base.ceiling else None
    if base.ceiling >= 1.0:
        console.print("[green]scale fit: every box can get a positive")
    elif best:
        console.print(f"scale fit: the ceiling is {base.ceiling:.3f}; the change that raises it most: "
                      f"{best['change']} ({base.ceiling:.3f} -> {best['ceiling']:.3f})")
    else:
        console.print(f"scale fit: the ceiling is {base.ceiling:.3f}; none of the tried changes (scale_fit.tries) "
                      f"raises it")
    if tried:
        changes = Table(title="scale fit: tried changes")
        changes.add_column("change")
        changes.add_column("ceiling", justify="right")
        for t in tried:
            changes.add_row(t["change"], f"{t['ceiling']:.3f}")
        console.print(changes)
    return {"split": sf.split, "images": len(records), "detector": what, **table, "tried": tried,
            "best_change": best, "tiling": tiles}


def tiling_fit(cfg: DictConfig, records: list, num_classes: int, ceiling: float, console: Console) -> dict | None:
    """When images are larger than the training size: the recall ceiling with tiles of that size at full
    resolution as the images (data.tile, detcli/data/tiles.py), and the command when it is higher."""
    size = image_size_of(cfg.data.image_size)
    side = size if isinstance(size, int) else max(size)
    if side < 32 or not any(max(r.width, r.height) > side for r in records):
        return None
    tiled_cfg = scale_fit.with_change(cfg, "data.image_size", side)  # the tile itself, not resized
    tiled = scale_fit.fit(tiled_cfg, tile_records(records, Tiling(side, 0.2)), num_classes).ceiling
    command = (f"detcli train ... data.tile={{size:{side},overlap:0.2}} data.image_size={side}; "
               f"detcli eval ... eval.tile={{size:{side},overlap:0.2}}")
    if tiled > ceiling + 0.005:
        console.print(f"scale fit: tiles of {side} px at full resolution raise the ceiling {ceiling:.3f} -> "
                      f"{tiled:.3f}: {command}")
    return {"size": side, "overlap": 0.2, "ceiling": round(tiled, 4), "raises": tiled > ceiling + 0.005,
            "command": command}


def fit_table(title: str, table: dict) -> Table:
    out = Table(title=title)
    for name in ("class", "boxes", "ceiling", *scale_fit.SIZE_BUCKETS):
        out.add_column(name, justify="left" if name == "class" else "right")

    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    for name, row in [*table["per_class"].items(), ("all", table["all"])]:
        out.add_row(name, str(row["boxes"]), cell(row["ceiling"]), *(cell(row[b]) for b in scale_fit.SIZE_BUCKETS))
    return out
