"""Sliced inference (eval.tile / predict.tile, SAHI's slicing): an image cut into overlapping windows at full
resolution (detcli/data/tiles.py), the windows run as batches through any detector callable (the PyTorch model,
an exported graph's predictor), their detections shifted back into the image, joined with the whole image's
detections at the model's size (SAHI's "standard prediction", `full`), and merged class by class with NMS, or with
box voting (`merge: vote`: each kept box moved to the score-weighted mean of its overlapping candidates, a
non-maximum merge) by the shared NMS of detcli/ops/nms.py.

Naming: T = windows, K = candidates of an image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from detcli.data import tiles
from detcli.data.collate import collate
from detcli.data.tiles import Tiling, windows
from detcli.errors import ConfigError
from detcli.ops.nms import nms_topk


@dataclass(frozen=True)
class Slicing:
    """eval.tile / predict.tile: the windows, whether the whole image is run too, how detections are merged."""

    tiling: Tiling
    full: bool = True
    merge: str = "nms"
    iou: float = 0.5
    batch: int = 8

    @classmethod
    def of(cls, node, nms_thresh: float = 0.5) -> Slicing | None:
        """A tile config node; its iou (null) defaults to the model's own NMS threshold, `nms_thresh` (merging the
        whole image's detections alone then gives them back unchanged)."""
        if node is None or node is False:
            return None
        node = dict(node)
        if node.get("merge", "nms") not in ("nms", "vote"):
            raise ConfigError(f"tile.merge must be nms or vote, got '{node['merge']}'.")
        tiling = tiles.tiling({k: v for k, v in node.items() if k in ("size", "overlap")})
        iou = node.get("iou")
        return cls(tiling, bool(node.get("full", True)), str(node.get("merge", "nms")),
                   float(nms_thresh if iou is None else iou), int(node.get("batch", 8)))


def sliced_detections(detect: Callable[[dict], list[dict]], image: Tensor, slicing: Slicing, full: dict | None,
                      num_classes: int, max_det: int, size_divisible: int = 32, pad_value: tuple = (114, 114, 114),
                      canvas: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """image uint8 (3, H, W) at full resolution; `detect(batch)` -> per image {boxes, scores, labels} in the
    pixels of the images it was given (a collate batch); `full`: the whole image's detections in its pixels (or
    None). -> the merged detections {boxes (D, 4), scores (D,), labels (D,)} in the image's pixels."""
    H, W = image.shape[-2:]
    wins = torch.from_numpy(windows(W, H, slicing.tiling))  # (T, 4)
    parts = [full] if full is not None and slicing.full else []
    for start in range(0, len(wins), slicing.batch):
        chunk = wins[start:start + slicing.batch]
        samples = [(image[:, y0:y1, x0:x1], {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
                    {"orig_size": (int(y1 - y0), int(x1 - x0))}) for x0, y0, x1, y1 in chunk.tolist()]
        for (x0, y0, _, _), d in zip(chunk.tolist(), detect(collate(samples, size_divisible, pad_value, canvas))):
            parts.append({**d, "boxes": d["boxes"] + torch.tensor([x0, y0, x0, y0], dtype=d["boxes"].dtype)})
    return merge(parts, slicing, num_classes, max_det)


def merge(parts: list[dict[str, Tensor]], slicing: Slicing, num_classes: int, max_det: int) -> dict[str, Tensor]:
    """The detections of the windows (and the whole image) -> one set: class-wise NMS at `slicing.iou` (with box
    voting at the same IoU when merge=vote), the best `max_det`."""
    boxes = torch.cat([p["boxes"].float() for p in parts])  # (K, 4)
    scores = torch.cat([p["scores"].float() for p in parts])  # (K,)
    labels = torch.cat([p["labels"].long() for p in parts])  # (K,)
    if not len(boxes):
        return {"boxes": boxes, "scores": scores, "labels": labels}
    vote = slicing.iou if slicing.merge == "vote" else None
    kept = nms_topk(boxes[None], scores[None], labels[None], slicing.iou, max_det, num_classes, vote)
    keep = kept["labels"][0] >= 0
    return {"boxes": kept["boxes"][0][keep], "scores": kept["scores"][0][keep], "labels": kept["labels"][0][keep]}


def slice_dataset(model, dataset, dets: list[dict], slicing: Slicing, device, precision: str, channels_last: bool,
                  num_classes: int, max_det: int, size_divisible: int, pad_value: tuple) -> list[dict]:
    """eval.tile: the detections of every image of `dataset` (in its order, as `collect` gave `dets`, the whole
    images' at the model's size) merged with those of its windows at full resolution."""
    from detcli.data.base import read_image
    from detcli.evaluation.evaluator import run_inference

    def detect(batch: dict) -> list[dict]:
        return next(run_inference(model, [batch], device, precision, channels_last))[1]

    return [sliced_detections(detect, read_image(dataset.image_dir / rec.file_name), slicing, full, num_classes,
                              max_det, size_divisible, pad_value) for rec, full in zip(dataset.records, dets)]
