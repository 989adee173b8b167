"""COCO box evaluation (the protocol of pycocotools' COCOeval, through faster-coco-eval's C++ COCOeval_faster):
the 12 summary statistics, per-class AP / AP50 / recall, and the precision arrays behind the PR curves.

Detections and ground truth arrive per image, in original pixels and contiguous labels; they are scored
with internal ids (images 1..N, categories label + 1) so that any dataset, or a results file, goes
through the same code. `tests/evaluation/test_coco_eval.py` checks the statistics against pycocotools itself.

Naming: N = images, C = classes, T = IoU thresholds (0.50:0.05:0.95), R = recall points (101),
A = area ranges (all, small, medium, large), M = max detections (1, 10, 100).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # its per-evaluation summary is ours to print

# the 12 COCO statistics in COCOeval.summarize() order, under torchmetrics' names
STAT_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


@dataclass
class CocoResult:
    stats: dict[str, float]  # the 12 statistics (-1 where no ground truth falls in that area range)
    per_class: list[dict]  # per class: name, gt (instances), dets, ap, ap_50, recall_50 (-1: no gt of it)
    precision: np.ndarray  # (T, R, C) at area "all" and 100 detections, -1 where a class has no gt
    recall_points: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 101))  # (R,)


class CocoEvaluation:
    """Accumulates images (`update`), then scores them (`compute`)."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.images: list[dict] = []
        self.gts: list[dict] = []
        self.dets: list[dict] = []

    def update(self, dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], sizes=None) -> None:
        """dets: per image boxes (D, 4) x1y1x2y2, scores (D,), labels (D,); gts: boxes (G, 4), labels (G,),
        optional iscrowd (G,) and area (G,) (default: the box area); sizes: per image (h, w) or None."""
        for i, (d, g) in enumerate(zip(dets, gts)):
            image_id = len(self.images) + 1
            h, w = sizes[i] if sizes is not None else (0, 0)
            self.images.append({"id": image_id, "height": int(h), "width": int(w)})
            boxes = _xywh(g["boxes"])
            crowd = g.get("iscrowd", torch.zeros(len(boxes), dtype=torch.int64)).tolist()
            area = g["area"].tolist() if "area" in g else (boxes[:, 2] * boxes[:, 3]).tolist()
            for box, label, c, a in zip(boxes.tolist(), g["labels"].tolist(), crowd, area):
                self.gts.append({"id": len(self.gts) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                 "bbox": box, "area": float(a), "iscrowd": int(c)})
            for box, score, label in zip(_xywh(d["boxes"]).tolist(), d["scores"].tolist(), d["labels"].tolist()):
                self.dets.append({"id": len(self.dets) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                  "bbox": box, "score": float(score), "area": box[2] * box[3]})

    def compute(self) -> CocoResult:
        from faster_coco_eval import COCO, COCOeval_faster

        categories = [{"id": k + 1, "name": n} for k, n in enumerate(self.class_names)]
        gt = COCO({"images": self.images, "annotations": self.gts, "categories": categories})
        dt = COCO({"images": self.images, "annotations": self.dets, "categories": categories})
        ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *_: None)
        ev.params.catIds = [c["id"] for c in categories]  # every class, also those without gt (AP -1)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = {k: float(v) for k, v in zip(STAT_KEYS, ev.stats[:12])}
        precision = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]  # (T, R, C): area all, 100 dets
        recall = np.asarray(ev.eval["recall"])[:, :, 0, -1]  # (T, C)
        gt_counts = np.bincount([a["category_id"] - 1 for a in self.gts if not a["iscrowd"]],
                                minlength=len(categories))
        det_counts = np.bincount([d["category_id"] - 1 for d in self.dets], minlength=len(categories))
        per_class = []
        for k, name in enumerate(self.class_names):
            p = precision[:, :, k]  # (T, R)
            has_gt = bool((p > -1).any())
            per_class.append({
                "class": name, "gt": int(gt_counts[k]), "dets": int(det_counts[k]),
                "ap": float(p[p > -1].mean()) if has_gt else -1.0,
                "ap_50": float(p[0][p[0] > -1].mean()) if has_gt else -1.0,
                "recall_50": float(recall[0, k]) if has_gt else -1.0,
            })
        return CocoResult(stats, per_class, precision)


def _xywh(boxes: Tensor) -> Tensor:
    """(n, 4) x1y1x2y2 -> (n, 4) x, y, w, h as COCO stores boxes."""
    boxes = boxes.float().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)


STAT_NAMES = {  # the names printed beside the metric keys (eval's table, the report)
    "map": "AP @ IoU 0.50:0.95", "map_50": "AP @ IoU 0.50", "map_75": "AP @ IoU 0.75",
    "map_small": "AP small (< 32² px)", "map_medium": "AP medium", "map_large": "AP large (> 96² px)",
    "mar_1": "AR, 1 detection", "mar_10": "AR, 10 detections", "mar_100": "AR, 100 detections",
    "mar_small": "AR small", "mar_medium": "AR medium", "mar_large": "AR large",
}
