"""The detection confusion matrix, with a background row and column (ultralytics' convention): per image,
detections at or above a score threshold are paired with ground truth at IoU >= a threshold, each box in at
most one pair, the best-overlapping pairs first; a pair counts (predicted class, true class), a lone
detection (its class, background), a missed object (background, its class). Crowd / difficult ground truth
is ignored, and so are detections that overlap only it.

Naming: C = classes, D = detections of an image, G = its ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou


def confusion_matrix(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], num_classes: int,
                     score_thresh: float = 0.25, iou_thresh: float = 0.45) -> np.ndarray:
    """(C + 1, C + 1) counts, rows the predicted class, columns the true class; index C is background."""
    C = num_classes
    matrix = np.zeros((C + 1, C + 1), dtype=np.int64)
    for d, g in zip(dets, gts):
        keep = d["scores"] >= score_thresh
        d_boxes, d_labels = d["boxes"][keep].float(), d["labels"][keep].long()  # (D, 4), (D,)
        crowd = g.get("iscrowd", torch.zeros(len(g["labels"]), dtype=torch.int64)).bool()
        g_boxes, g_labels = g["boxes"][~crowd].float(), g["labels"][~crowd].long()  # (G, 4), (G,)
        iou = box_iou(d_boxes, g_boxes) if len(d_boxes) and len(g_boxes) else torch.zeros(len(d_boxes), len(g_boxes))
        pairs = (iou >= iou_thresh).nonzero()  # (P, 2) as (det, gt)
        pairs = pairs[iou[pairs[:, 0], pairs[:, 1]].argsort(descending=True)] if len(pairs) else pairs
        det_done, gt_done = torch.zeros(len(d_boxes), dtype=torch.bool), torch.zeros(len(g_boxes), dtype=torch.bool)
        for i, j in pairs.tolist():  # greedy, best IoU first: each box in one pair
            if not det_done[i] and not gt_done[j]:
                det_done[i] = gt_done[j] = True
                matrix[d_labels[i], g_labels[j]] += 1
        if crowd.any() and len(d_boxes):  # lone detections on crowd regions are not false positives
            on_crowd = (box_iou(d_boxes, g["boxes"][crowd].float()) >= iou_thresh).any(1)
            det_done |= on_crowd
        np.add.at(matrix, (d_labels[~det_done].numpy(), C), 1)
        np.add.at(matrix, (C, g_labels[~gt_done].numpy()), 1)
    return matrix
