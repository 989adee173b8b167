"""Evaluation over a loader: detections mapped back to original pixels, gathered from every DDP rank, and
scored by COCO's protocol (detcli/evaluation/coco.py: the 12 statistics, per-class numbers), with the
F1-optimal score thresholds per class (detcli/evaluation/thresholds.py) that training stores in its checkpoints.

Naming: B = images, D = detections per image (padded with label -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detcli.device import autocast_dtype
from detcli.evaluation.coco import STAT_KEYS, CocoEvaluation, CocoResult
from detcli.ops.boxes import clip_boxes

METRIC_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]  # the ones printed in training


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
    """Yields (batch, per-image detections in original pixels) over a loader, under autocast at `precision`
    (a trainer.precision; auto resolved for `device`)."""
    model.eval()
    dtype = autocast_dtype(precision, device)
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            dets = model(images, image_sizes=batch["image_sizes"].to(device))
        yield batch, to_original(dets, batch)


def collect(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
            channels_last: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """(detections, ground truth, image meta) per image over the loader, from every rank when distributed
    (each rank evaluates its share; all of them get the whole list)."""
    dets, gts, metas = [], [], []
    for batch, batch_dets in run_inference(model, loader, device, precision, channels_last):
        dets += batch_dets
        gts += [m["gt"] for m in batch["meta"]]
        metas += [{k: m[k] for k in ("image_id", "file_name", "orig_size")} for m in batch["meta"]]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shares = [None] * dist.get_world_size()
        dist.all_gather_object(shares, (dets, gts, metas))
        dets, gts, metas = ([x for share in shares for x in share[i]] for i in range(3))
    return dets, gts, metas


def score(dets: list[dict], gts: list[dict], class_names: list[str] | None = None) -> CocoResult:
    """COCO's evaluation of per-image detections against ground truth (contiguous labels); without class
    names, the classes are those the labels reach (the 12 statistics average over classes with ground truth)."""
    if class_names is None:
        labels = [int(x["labels"].max()) for x in (*dets, *gts) if len(x["labels"])]
        class_names = [str(k) for k in range(max(labels, default=0) + 1)]
    evaluation = CocoEvaluation(class_names)
    evaluation.update(dets, gts)
    return evaluation.compute()


@dataclass
class Evaluation:
    """One evaluation kept whole: what the end-of-training report draws from (detcli/visualization/report.py)."""

    dets: list[dict]  # per image: boxes (D, 4) in original pixels, scores (D,), labels (D,)
    gts: list[dict]  # per image: boxes, labels, iscrowd, area
    metas: list[dict]  # per image: image_id, file_name, orig_size
    result: CocoResult

    @property
    def metrics(self) -> dict[str, float]:
        return {k: self.result.stats[k] for k in STAT_KEYS}


def evaluation(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
               channels_last: bool = False, class_names: list[str] | None = None) -> Evaluation:
    """The model's detections on the loader's images with their COCO scoring, per class when named."""
    dets, gts, metas = collect(model, loader, device, precision, channels_last)
    return Evaluation(dets, gts, metas, score(dets, gts, class_names))


def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
             channels_last: bool = False) -> dict[str, float]:
    """The 12 COCO statistics of the model on the loader's images (STAT_KEYS)."""
    return evaluation(model, loader, device, precision, channels_last).metrics
