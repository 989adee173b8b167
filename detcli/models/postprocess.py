"""Decoding of dense predictions into detections, for the whole batch at once.

The output has a fixed shape, (B, max_det) per image padded with score 0 and label -1, so the same
code runs in training-time evaluation, predict and the exported ONNX graph (dynamic batch axis).

Naming: B = images, R = points, C = classes, K = candidates per image, D = max_det.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from detcli.ops.points import ltrb_to_boxes


def nms_topk(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_det: int) -> dict[str, Tensor]:
    """Class-wise NMS inside each image, all images in one NMS call, then the best `max_det` per image.

    boxes (B, K, 4) inside the images, scores (B, K) with invalid candidates < 0, labels (B, K).
    Images and classes are kept apart by shifting boxes: x by label * S, y by image * S, with S larger
    than any coordinate (2-D offsets keep the shifted coordinates small enough for fp32).
    """
    B, K = scores.shape
    span = boxes.detach().amax() + 1  # () no host sync
    image_idx = torch.arange(B, device=scores.device)[:, None].expand(B, K)  # (B, K)
    shift = torch.stack([labels, image_idx, labels, image_idx], dim=-1).to(boxes.dtype) * span  # (B, K, 4)
    flat_scores = scores.reshape(-1)  # (B*K,)
    valid = (flat_scores >= 0).nonzero().squeeze(1)  # (N,)
    keep = valid[nms((boxes + shift).reshape(-1, 4)[valid], flat_scores[valid], iou)]
    kept_scores = torch.full_like(flat_scores, -1.0).index_copy(0, keep, flat_scores[keep]).reshape(B, K)
    top_scores, top_idx = kept_scores.topk(min(max_det, K), dim=1)  # (B, D)
    found = top_scores >= 0
    return {
        "boxes": torch.gather(boxes, 1, top_idx[..., None].expand(-1, -1, 4)) * found[..., None],
        "scores": top_scores.clamp(min=0),
        "labels": torch.where(found, torch.gather(labels, 1, top_idx), torch.full_like(top_idx, -1)),
    }


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """boxes (B, K, 4), image_sizes (B, 2) as (h, w) -> boxes clipped into each image."""
    hw = image_sizes.to(boxes.dtype)
    upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None]  # (B, 1, 4)
    return torch.minimum(boxes.clamp(min=0), upper)


class FCOSPostprocess(nn.Module):
    """score = sqrt(sigmoid(cls) * sigmoid(centerness)); top-k per level, threshold, NMS, max_det."""

    def __init__(
        self,
        num_classes: int,
        score_thresh: float = 0.05,
        topk_per_level: int = 1000,
        nms_thresh: float = 0.6,
        max_det: int = 100,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.topk_per_level = topk_per_level
        self.nms_thresh = nms_thresh
        self.max_det = max_det

    def forward(self, preds: dict, image_sizes: Tensor) -> dict[str, Tensor]:
        C = self.num_classes
        scores = torch.sqrt(
            preds["cls_logits"].float().sigmoid() * preds["centerness"].float().sigmoid()[..., None]
        )  # (B, R, C)
        boxes = ltrb_to_boxes(preds["points"], preds["bbox_reg"].float())  # (B, R, 4)
        cand_boxes, cand_scores, cand_labels = [], [], []
        start = 0
        for n in preds["level_sizes"]:
            level_scores = scores[:, start : start + n].flatten(1)  # (B, n*C)
            top, idx = level_scores.topk(min(self.topk_per_level, n * C), dim=1)  # (B, k)
            point_idx = idx // C + start
            cand_boxes.append(torch.gather(boxes, 1, point_idx[..., None].expand(-1, -1, 4)))  # (B, k, 4)
            cand_scores.append(top)
            cand_labels.append(idx % C)
            start += n
        boxes = clip_boxes(torch.cat(cand_boxes, 1), image_sizes)  # (B, K, 4)
        scores = torch.cat(cand_scores, 1)  # (B, K)
        scores = torch.where(scores >= self.score_thresh, scores, torch.full_like(scores, -1.0))
        return nms_topk(boxes, scores, torch.cat(cand_labels, 1), self.nms_thresh, self.max_det)
