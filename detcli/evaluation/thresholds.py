"""Per-class score thresholds that maximise F1 on the val set, and each image's errors at them.

Detections are matched to objects at IoU 0.5 as COCO does (greedy by score inside each image and class, as
tide.py's `_classify`, vectorised but for the detections that overlap an object of their class, so that it
stays cheap at every evaluation of a training run; detections on crowd / difficult objects alone are
ignored, and so are those objects). For a
class, keeping its detections with score >= t gives TP(t), FP(t) and P = TP / (TP + FP), R = TP / objects;
the threshold kept is the score maximising F1 = 2PR / (P + R), the highest such score on a tie. A class
without objects or detections, or whose detections never find an object (F1 = 0), gets None: the caller
falls back to its global threshold. Each class keeps a score prefix of its detections, so the matches at a
threshold are those of the full matching.

Naming: C = classes, D = detections of an image, G = its objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

DEFAULT_THRESH = 0.3  # predict.score_thresh=null and no stored threshold for a class


@dataclass
class Matches:
    """Every detection (over all images) and every object, after the matching."""

    image: np.ndarray  # (n,) the image of each detection
    label: np.ndarray  # (n,)
    score: np.ndarray  # (n,)
    kind: np.ndarray  # (n,) 1 true positive, 0 false positive, -1 ignored (on a crowd object)
    gt: np.ndarray  # (n,) the object a true positive matched (index within its image), else -1
    objects: list[tuple[np.ndarray, np.ndarray]]  # per image (labels (G,), crowd (G,) bool)


def match(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], iou: float = 0.5) -> Matches:
    """COCO's greedy matching at IoU `iou` of each image's detections, best score first."""
    parts, objects = [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        g_labels = g["labels"].long().numpy()  # (G,)
        crowd = g.get("iscrowd", torch.zeros(len(g_labels), dtype=torch.int64)).bool().numpy()  # (G,)
        objects.append((g_labels, crowd))
        order = d["scores"].argsort(descending=True, stable=True)
        scores, labels = d["scores"][order].float().numpy(), d["labels"][order].long().numpy()  # (D,) each
        overlap = (box_iou(d["boxes"][order].float().reshape(-1, 4), g["boxes"].float().reshape(-1, 4)).numpy()
                   if len(labels) and len(g_labels) else np.zeros((len(labels), len(g_labels))))  # (D, G)
        hit = (overlap >= iou) & (labels[:, None] == g_labels[None])  # (D, G) same class, IoU >= iou
        kind = np.where((hit & crowd).any(1), -1, 0)  # (D,) ignored unless it matches a free object below
        gt = np.full(len(labels), -1)
        free = ~crowd  # (G,)
        for j in np.flatnonzero((hit & ~crowd).any(1)):  # the few detections on an object of their class
            row = np.where(hit[j] & free, overlap[j], -1.0)  # (G,)
            if row.max() >= 0:
                gt[j], kind[j] = int(row.argmax()), 1
                free[gt[j]] = False
        parts.append((np.full(len(labels), i), labels, scores, kind, gt))
    cat = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in range(5)]
    return Matches(*cat, objects=objects)


def f1_thresholds(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], num_classes: int,
                  iou: float = 0.5) -> list[float | None]:
    """dets / gts per image as in CocoEvaluation.update -> (C,) the F1-optimal score threshold per class
    (None: no objects, no detections or no true positive of it)."""
    m = match(dets, gts, iou)
    labels = np.concatenate([lab[~crowd] for lab, crowd in m.objects]) if m.objects else np.zeros(0)
    positives = np.bincount(labels.astype(np.int64), minlength=num_classes)  # (C,)
    out: list[float | None] = []
    for c in range(num_classes):
        mine = np.flatnonzero((m.label == c) & (m.kind >= 0))
        mine = mine[np.argsort(-m.score[mine], kind="stable")]  # best first
        out.append(_best_threshold(m.score[mine], m.kind[mine] == 1, int(positives[c])))
    return out


def _best_threshold(scores: np.ndarray, tp: np.ndarray, positives: int) -> float | None:
    """scores (D,) best first, tp (D,) -> the score maximising F1 over thresholds `score >= t`."""
    if positives == 0 or len(scores) == 0 or not tp.any():
        return None
    tps = np.cumsum(tp, dtype=np.float64)  # (D,) true positives kept at threshold scores[i]
    precision, recall = tps / np.arange(1, len(tp) + 1), tps / positives
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).eps)
    last = np.append(scores[1:] != scores[:-1], True)  # a threshold keeps every detection of equal score
    f1 = np.where(last, f1, -1.0)
    return float(scores[int(np.argmax(f1))])


def image_errors(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], thresholds: list[float | None],
                 default: float = 0.3, iou: float = 0.5) -> list[dict[str, int]]:
    """Per image {"missed": objects no kept detection found, "false": kept detections that are not true
    positives}; a detection is kept at its class's threshold (`default` where that is None)."""
    m = match(dets, gts, iou)
    thresh = np.array([default if t is None else t for t in thresholds], dtype=np.float64)  # (C,)
    kept = m.score >= thresh[m.label.astype(np.int64)] if len(m.label) else np.zeros(0, dtype=bool)
    bounds = np.searchsorted(m.image, np.arange(len(m.objects) + 1))  # the detections are in image order
    out = []
    for i, (labels, crowd) in enumerate(m.objects):
        mine = slice(bounds[i], bounds[i + 1])
        found = np.zeros(len(labels), dtype=bool)  # (G,)
        found[m.gt[mine][kept[mine] & (m.kind[mine] == 1)].astype(np.int64)] = True
        out.append({"missed": int((~found & ~crowd).sum()), "false": int((kept[mine] & (m.kind[mine] == 0)).sum())})
    return out


def worst_images(errors: list[dict[str, int]], k: int) -> list[int]:
    """The indices of the `k` images with the most errors (missed + false), most first; images without
    errors are left out, ties keep the image order."""
    ranked = sorted(range(len(errors)), key=lambda i: -(errors[i]["missed"] + errors[i]["false"]))
    return [i for i in ranked[:k] if errors[i]["missed"] + errors[i]["false"] > 0]
