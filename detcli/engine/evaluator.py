"""COCO evaluation: torchmetrics MeanAveragePrecision with the faster-coco-eval backend, on detections
mapped back to original pixels.

Naming: B = images, D = detections per image (padded with label -1).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from detcli.engine.utils import autocast_dtype
from detcli.models.postprocess import clip_boxes

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # its per-evaluation summary is ours to print

METRIC_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]


def to_original(dets: dict[str, Tensor], batch: dict) -> list[dict[str, Tensor]]:
    """Batched fixed-shape detections in resized pixels -> per image, original pixels, padding dropped.
    Boxes are divided by the batch's per-axis `scale` (what the resize did), then clipped to the
    original image."""
    scale = batch["scale"].float()[:, None]  # (B, 1, 4) resized / original, as x, y, x, y
    boxes = clip_boxes(dets["boxes"].float().cpu() / scale, batch["orig_sizes"])  # (B, D, 4)
    scores, labels = dets["scores"].float().cpu(), dets["labels"].cpu()  # (B, D) each
    out = []
    for b, s, lab in zip(boxes, scores, labels):
        keep = lab >= 0
        out.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return out


@torch.no_grad()
def run_inference(model: nn.Module, loader, device: torch.device, precision: str = "fp32", channels_last=False):
    """Yields (batch, per-image detections in original pixels) over a loader."""
    model.eval()
    dtype = autocast_dtype(precision)
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            dets = model(images, image_sizes=batch["image_sizes"].to(device))
        yield batch, to_original(dets, batch)


def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
             channels_last: bool = False) -> dict[str, float]:
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    for batch, dets in run_inference(model, loader, device, precision, channels_last):
        metric.update(dets, [m["gt"] for m in batch["meta"]])
    result = metric.compute()
    return {k: float(result[k]) for k in METRIC_KEYS}
