"""Detections from the dense per-point predictions of a one-stage head (FCOS, YOLOX): the best
`topk_per_level` (point, class) scores of each pyramid level, clipped boxes, a score threshold, then the
shared NMS (detcli/ops/nms.py). Each head's own decoding (`scores_and_boxes`) lives beside its head.

Naming: B = images, R = points, C = classes, K = candidates per image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detcli.ops.boxes import clip_boxes
from detcli.ops.nms import nms_topk
from detcli.ops.tracing import topk_size


class DensePostprocess(nn.Module):
    """Detections from the dense per-point predictions of a one-stage head: the best `topk_per_level`
    (point, class) scores of each level, clipped boxes, a score threshold, class-wise NMS, `max_det`, box
    voting with `vote_iou`.
    A head's postprocess defines `scores_and_boxes` (its decoding) and inherits the rest."""

    def __init__(
        self,
        num_classes: int,
        score_thresh: float = 0.05,
        topk_per_level: int = 1000,
        nms_thresh: float = 0.6,
        max_det: int = 100,
        vote_iou: float | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.vote_iou = vote_iou
        self.score_thresh = score_thresh
        self.topk_per_level = topk_per_level
        self.nms_thresh = nms_thresh
        self.max_det = max_det

    def scores_and_boxes(self, preds: dict) -> tuple[Tensor, Tensor]:
        """The head's decoding: scores (B, R, C) in [0, 1] and boxes (B, R, 4) x1y1x2y2 in input pixels, before
        any threshold, clipping or NMS (what `detcli export export.nms=false` outputs)."""
        raise NotImplementedError

    def forward(self, preds: dict, image_sizes: Tensor) -> dict[str, Tensor]:
        C = self.num_classes
        scores, boxes = self.scores_and_boxes(preds)  # (B, R, C), (B, R, 4)
        cand_boxes, cand_scores, cand_labels = [], [], []
        start = 0
        for n in preds["level_sizes"]:
            level_scores = scores[:, start : start + n].flatten(1)  # (B, n*C)
            top, idx = level_scores.topk(topk_size(level_scores, self.topk_per_level), dim=1)  # (B, k)
            point_idx = idx // C + start
            cand_boxes.append(torch.gather(boxes, 1, point_idx[..., None].expand(-1, -1, 4)))  # (B, k, 4)
            cand_scores.append(top)
            cand_labels.append(idx % C)
            start += n
        boxes = clip_boxes(torch.cat(cand_boxes, 1), image_sizes)  # (B, K, 4)
        scores = torch.cat(cand_scores, 1)  # (B, K)
        scores = torch.where(scores >= self.score_thresh, scores, torch.full_like(scores, -1.0))
        return nms_topk(boxes, scores, torch.cat(cand_labels, 1), self.nms_thresh, self.max_det, C,
                        self.vote_iou)
