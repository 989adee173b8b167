"""Why AP is lost: the TIDE breakdown (Bolya et al., ECCV 2020). Every detection that is not a true positive
at IoU 0.5 gets one error type, every object no detection finds is missed, and for each type the AP is
recomputed with those errors fixed by an oracle: the difference is the AP that type costs.

Error types of a detection (its best IoU with any object, `fg` = 0.5 and `bg` = 0.1 as in TIDE):
- cls: IoU >= fg with an object of another class (fixed: the detection takes that class);
- dupe: IoU >= fg with an object of its class that a higher-scored detection already matched (fixed: removed);
- loc: fg > IoU >= bg with an object of its class (fixed: the detection takes the object's box);
- both: fg > IoU >= bg with an object of another class only (fixed: removed);
- bkg: IoU < bg with every object (fixed: removed);
- missed: an object no detection matched and no cls / loc error points at (fixed: taken out of the count).
A fixed cls / loc detection whose object is already matched becomes a duplicate, and is removed.
`fp` fixes every false positive and `fn` takes every unmatched object out of the count at once. Crowd (iscrowd / difficult) objects
are neither matched nor missed: detections on them are ignored, as in COCO.

AP here is COCO's 101-point interpolated AP at IoU 0.5 per class, averaged over the classes with objects.
Written by hand (TIDE's package `tidecv` is not maintained for current numpy); tests/evaluation/test_tide.py plants
each error type in a fixture and checks that fixing it recovers the AP reported.

Naming: D = detections of an image, G = its objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

ERRORS = ("cls", "loc", "both", "dupe", "bkg", "missed")


@dataclass
class _Det:
    image: int
    label: int
    score: float
    kind: str  # "tp", "ignore" (on a crowd object) or one of ERRORS[:-1]
    gt: int = -1  # the object it matched (tp) or points at (cls, loc, dupe): index within its image


def tide(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], num_classes: int, fg: float = 0.5,
         bg: float = 0.1) -> dict:
    """dets / gts per image as in CocoEvaluation.update -> {"ap": AP50, "delta": {error: AP recovered,
    ..., "fp": ..., "fn": ...}, "per_class": [{"ap", "delta"}...], "counts": {error: how many}}."""
    items, objects = _classify(dets, gts, fg, bg)
    base = _map(items, objects, num_classes)
    counted = [ap >= 0 for ap in base]  # the classes in the mean stay those with objects before any fix
    delta = {}
    for error in ERRORS:
        delta[error] = _map(*_fix(items, objects, {error}), num_classes, counted)
    delta["fp"] = _map(*_fix(items, objects, {"cls", "loc", "both", "dupe", "bkg"}), num_classes, counted)
    delta["fn"] = _map(*_fix(items, objects, {"fn"}), num_classes, counted)
    out_delta = {k: _mean(v) - _mean(base) for k, v in delta.items()}
    per_class = [{"ap": base[c], "delta": {k: (v[c] - base[c]) if base[c] >= 0 else -1.0 for k, v in delta.items()}}
                 for c in range(num_classes)]
    counts = {e: sum(d.kind == e for d in items) for e in ERRORS[:-1]}
    covered = {(d.image, d.gt) for d in items if d.kind in ("cls", "loc")}
    counts["missed"] = sum(not o["crowd"] and not o["matched"] and (i, k) not in covered
                           for i, objs in enumerate(objects) for k, o in enumerate(objs))
    return {"ap": _mean(base), "delta": out_delta, "per_class": per_class, "counts": counts}


def _mean(per_class: list[float]) -> float:
    """The mean over classes with objects (-1 marks the others); -1 when there are none."""
    valid = [p for p in per_class if p >= 0]
    return float(np.mean(valid)) if valid else -1.0


def _classify(dets, gts, fg: float, bg: float) -> tuple[list[_Det], list[list[dict]]]:
    """Each detection's kind, COCO-style greedy matching by score inside each image and class."""
    items: list[_Det] = []
    objects: list[list[dict]] = []
    for i, (d, g) in enumerate(zip(dets, gts)):
        g_boxes, g_labels = g["boxes"].float().reshape(-1, 4), g["labels"].long()  # (G, 4), (G,)
        crowd = g.get("iscrowd", torch.zeros(len(g_labels), dtype=torch.int64)).bool()
        objs = [{"label": int(lab), "box": b, "crowd": bool(c), "matched": False}
                for lab, b, c in zip(g_labels.tolist(), g_boxes, crowd.tolist())]
        objects.append(objs)
        order = d["scores"].argsort(descending=True, stable=True)
        d_boxes, d_labels, d_scores = d["boxes"].float()[order], d["labels"].long()[order], d["scores"][order]
        iou = box_iou(d_boxes, g_boxes) if len(d_boxes) and len(g_boxes) else torch.zeros(len(d_boxes), len(g_boxes))
        for j in range(len(d_boxes)):  # (D,) in score order
            label, row = int(d_labels[j]), iou[j]  # (G,)
            same = (g_labels == label) & ~crowd
            free = same & torch.tensor([not o["matched"] for o in objs], dtype=torch.bool)
            item = _Det(i, label, float(d_scores[j]), "bkg")
            if free.any() and row[free].max() >= fg:  # the best free object of its class: a true positive
                k = int(torch.where(free, row, torch.full_like(row, -1)).argmax())
                objs[k]["matched"], item.kind, item.gt = True, "tp", k
            elif (crowd & (g_labels == label)).any() and row[crowd & (g_labels == label)].max() >= fg:
                item.kind = "ignore"
            elif same.any() and row[same].max() >= fg:  # its object was taken by a better detection
                item.kind, item.gt = "dupe", int(torch.where(same, row, torch.full_like(row, -1)).argmax())
            elif (~same & ~crowd).any() and row[~same & ~crowd].max() >= fg:
                other = ~same & ~crowd
                item.kind, item.gt = "cls", int(torch.where(other, row, torch.full_like(row, -1)).argmax())
            elif same.any() and row[same].max() >= bg:
                item.kind, item.gt = "loc", int(torch.where(same, row, torch.full_like(row, -1)).argmax())
            elif (~same & ~crowd).any() and row[~same & ~crowd].max() >= bg:
                item.kind = "both"
            elif crowd.any() and row[crowd].max() >= bg:
                item.kind = "ignore"
            items.append(item)
    return items, objects


def _fix(items: list[_Det], objects: list[list[dict]], errors: set[str]) -> tuple[list[tuple], list[list[dict]]]:
    """The detections as (image, label, score, tp) and the objects after the oracle fixes `errors`."""
    taken = {(d.image, d.gt) for d in items if d.kind == "tp"}
    out = []
    for d in sorted(items, key=lambda d: -d.score):
        if d.kind == "ignore":
            continue
        if d.kind not in errors or d.kind == "tp":
            out.append((d.image, d.label, d.score, d.kind == "tp"))
        elif d.kind in ("cls", "loc") and (d.image, d.gt) not in taken:  # fixed into a true positive
            taken.add((d.image, d.gt))
            out.append((d.image, objects[d.image][d.gt]["label"], d.score, True))
        # else removed: dupe, both, bkg, and fixes that land on a matched object
    fixed_objects = objects
    if errors & {"missed", "fn"}:  # objects still unmatched leave the count (missed: those no cls / loc
        # error points at; fn: all of them)
        keep = taken if "fn" in errors else taken | {(d.image, d.gt) for d in items if d.kind in ("cls", "loc")}
        fixed_objects = [[{**o, "crowd": o["crowd"] or ((i, k) not in keep)} for k, o in enumerate(objs)]
                         for i, objs in enumerate(objects)]
    return out, fixed_objects


def _map(items, objects: list[list[dict]], num_classes: int, counted: list[bool] | None = None) -> list[float]:
    """Per class AP at IoU 0.5 (COCO's 101 recall points); -1 for a class without objects, unless `counted`
    keeps it (a fix took all its objects out of the count: nothing was found, AP 0). `items` are _Det (their
    kind says tp) or (image, label, score, tp) tuples."""
    rows = [(d.label, d.score, d.kind == "tp") if isinstance(d, _Det) else (d[1], d[2], d[3])
            for d in items if not (isinstance(d, _Det) and d.kind == "ignore")]
    positives = np.bincount([o["label"] for objs in objects for o in objs if not o["crowd"]], minlength=num_classes)
    out = []
    for c in range(num_classes):
        if positives[c] == 0:
            out.append(0.0 if counted is not None and counted[c] else -1.0)
            continue
        mine = sorted((r for r in rows if r[0] == c), key=lambda r: -r[1])
        tp = np.cumsum([r[2] for r in mine], dtype=np.float64)
        fp = np.cumsum([not r[2] for r in mine], dtype=np.float64)
        recall = tp / positives[c]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        out.append(_ap_101(recall, precision))
    return out


def _ap_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's interpolated AP: the precision envelope sampled at recall 0, 0.01, ..., 1 (0 past the last)."""
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))
