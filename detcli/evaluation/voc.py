"""PASCAL VOC detection AP at IoU 0.5, per class: the 11-point interpolation of VOC2007 and the area under the
interpolated curve of VOC2010+ (all points), as the VOC devkit computes them. Ground truth flagged iscrowd
(VOC's `difficult`) is neither a hit nor a miss: a detection on it counts as neither.

Naming: D = detections of one class over all images, G = ground-truth boxes of one image and class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou


def voc_ap(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], num_classes: int,
           iou: float = 0.5) -> list[dict[str, float]]:
    """dets / gts per image as in CocoEvaluation.update -> per class {"ap_11": ..., "ap_area": ...}, -1 for a
    class without (non-difficult) ground truth."""
    out = []
    for c in range(num_classes):
        scores, image_of, box_of = [], [], []
        for i, d in enumerate(dets):
            mine = d["labels"] == c
            scores.append(d["scores"][mine].float())
            box_of.append(d["boxes"][mine].float())
            image_of.append(torch.full((int(mine.sum()),), i))
        scores, image_of, boxes = torch.cat(scores), torch.cat(image_of), torch.cat(box_of)  # (D,), (D,), (D, 4)
        order = scores.argsort(descending=True, stable=True)
        gt_boxes = [g["boxes"][g["labels"] == c].float() for g in gts]  # per image (G, 4)
        difficult = [g.get("iscrowd", torch.zeros(len(g["labels"]), dtype=torch.int64))[g["labels"] == c].bool()
                     for g in gts]
        positives = sum(int((~d).sum()) for d in difficult)
        if positives == 0:
            out.append({"ap_11": -1.0, "ap_area": -1.0})
            continue
        taken = [torch.zeros(len(b), dtype=torch.bool) for b in gt_boxes]
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for rank, j in enumerate(order.tolist()):
            i = int(image_of[j])
            if len(gt_boxes[i]) == 0:
                fp[rank] = 1
                continue
            overlaps = box_iou(boxes[j : j + 1], gt_boxes[i])[0]  # (G,)
            best = int(overlaps.argmax())
            if overlaps[best] < iou:
                fp[rank] = 1
            elif difficult[i][best]:
                continue  # on a difficult object: neither
            elif not taken[i][best]:
                tp[rank], taken[i][best] = 1, True
            else:
                fp[rank] = 1  # a duplicate
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        out.append({"ap_11": ap_11_point(recall, precision), "ap_area": ap_area(recall, precision)})
    return out


def ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007: the mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t (0 where none)."""
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.linspace(0, 1, 11)]))


def ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+: the area under the precision envelope (precision made non-increasing in recall)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
