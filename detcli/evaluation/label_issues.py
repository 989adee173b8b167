"""Likely label errors, ranked, from a trained model's detections on a split: cleanlab's object-detection scores
(cleanlab.object_detection.rank), one per box and kind, lower = more likely wrong:
- missing: a confident detection that no label covers (cleanlab's "overlooked", scored per detection);
- wrong_class: a label whose box the model sees as another class ("swap", per label);
- bad_location: a label whose class is right but whose box is off ("badloc", per label).

This module converts detcli's per-image detections and ground truth to cleanlab's format (labels: per image
{"bboxes" (L, 4) x1y1x2y2, "labels" (L,)}; predictions: per image one (M_k, 5) [x1, y1, x2, y2, score] array per
class) and cleanlab's per-box scores back to a ranked list of issues in original pixels.

Naming: L = labels of an image, M = detections of an image, C = classes.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from detcli.errors import ConfigError

KINDS = ("missing", "wrong_class", "bad_location")


def _cleanlab():
    try:
        from cleanlab.object_detection import rank
    except ImportError as e:
        raise ConfigError("eval.label_issues=true ranks label issues with cleanlab: pip install 'detcli[labels]' "
                          "(or pip install cleanlab).") from e
    return rank


def to_cleanlab(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], num_classes: int):
    """(labels, predictions, order): cleanlab's inputs, and per image the detection indices in the order cleanlab
    flattens its predictions (class by class), so that its per-detection scores map back."""
    labels, predictions, orders = [], [], []
    for d, g in zip(dets, gts):
        crowd = g.get("iscrowd")
        keep = ~crowd.bool() if crowd is not None else torch.ones(len(g["labels"]), dtype=torch.bool)
        labels.append({"bboxes": g["boxes"][keep].double().numpy().reshape(-1, 4),
                       "labels": g["labels"][keep].long().numpy()})
        per_class, order = [], []
        for c in range(num_classes):
            idx = torch.nonzero(d["labels"] == c).flatten()  # (M_c,)
            order.append(idx)
            rows = torch.cat([d["boxes"][idx].double(), d["scores"][idx, None].double()], 1)  # (M_c, 5)
            per_class.append(rows.numpy().reshape(-1, 5))
        array = np.empty(num_classes, dtype=object)
        array[:] = per_class
        predictions.append(array)
        orders.append(torch.cat(order) if order else torch.zeros(0, dtype=torch.long))
    return labels, predictions, orders


def find_label_issues(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], metas: list[dict],
                      names: list[str], confident: float) -> dict[str, list[dict]]:
    """Per kind, every scored box as an issue {"file_name", "image_id", "kind", "box", "class", "score", ...},
    the most likely first (lowest score). `confident`: the detection score from which cleanlab trusts a
    detection (its high_probability_threshold: 0.95 by default, for calibrated probabilities; a detector's scores
    run lower, see `confident_score`)."""
    rank = _cleanlab()
    labels, predictions, orders = to_cleanlab(dets, gts, len(names))
    with contextlib.redirect_stdout(io.StringIO()):  # cleanlab prints progress
        scores = {"missing": rank.compute_overlooked_box_scores(labels=labels, predictions=predictions,
                                                                high_probability_threshold=confident),
                  "wrong_class": rank.compute_swap_box_scores(labels=labels, predictions=predictions,
                                                              high_probability_threshold=confident),
                  "bad_location": rank.compute_badloc_box_scores(labels=labels, predictions=predictions)}
    out = {}
    for kind, per_image in scores.items():
        items = []
        for i, s in enumerate(per_image):
            for j in np.nonzero(np.isfinite(s))[0]:
                items.append(_issue(kind, float(s[j]), int(j), dets[i], labels[i], orders[i], metas[i], names))
        # ties (cleanlab gives many missing boxes 0): the more confident detection first
        out[kind] = sorted(items, key=lambda x: (x["score"], -x.get("model_score", 0.0)))
    return out


def confident_score(setting, thresholds: list[float | None]) -> float:
    """eval.label_issues_confident: a number, or auto: the median of the per-class F1-optimal score thresholds
    (detcli/evaluation/thresholds.py; 0.5 without any). On the pasted-objects set with 5 % of its val boxes
    swapped, dropped and shifted, auto (0.61 there) put 67 / 89 / 91 % planted issues in the top K of missing /
    wrong_class / bad_location, cleanlab's 0.95 0 / 5 / 91 %."""
    if setting != "auto":
        return float(setting)
    known = [t for t in thresholds if t is not None]
    return float(np.median(known)) if known else 0.5


def _issue(kind: str, score: float, j: int, d: dict, label: dict, order: Tensor, meta: dict, names: list[str]) -> dict:
    """One issue: the detection j (missing) or the label j (the others), with the model's box that speaks for it
    (the detection itself, else the detection overlapping the label most)."""
    base = {"file_name": meta["file_name"], "image_id": meta["image_id"], "kind": kind, "score": round(score, 6)}
    if kind == "missing":
        k = int(order[j])
        box = d["boxes"][k]
        return {**base, "box": [round(v, 2) for v in box.tolist()], "class": names[int(d["labels"][k])],
                "model_box": [round(v, 2) for v in box.tolist()], "model_class": names[int(d["labels"][k])],
                "model_score": round(float(d["scores"][k]), 4)}
    box = torch.as_tensor(label["bboxes"][j], dtype=torch.float32)
    issue = {**base, "box": [round(v, 2) for v in box.tolist()], "class": names[int(label["labels"][j])]}
    if len(d["boxes"]):
        overlap = box_iou(box[None], d["boxes"].float())[0]  # (M,)
        same = d["labels"] == int(label["labels"][j])  # (M,)
        # the model's most confident box on it: of another class (wrong_class), of its class (bad_location)
        near = (overlap >= 0.5) & ~same if kind == "wrong_class" else (overlap > 0) & same  # (M,)
        if near.any():
            k = int(torch.where(near, d["scores"].float(), torch.full_like(overlap, -1.0)).argmax())
            issue.update({"model_box": [round(v, 2) for v in d["boxes"][k].tolist()],
                          "model_class": names[int(d["labels"][k])], "model_score": round(float(d["scores"][k]), 4),
                          "iou": round(float(overlap[k]), 4)})
    return issue
