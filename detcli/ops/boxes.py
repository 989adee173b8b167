"""x1y1x2y2 box helpers: IoU in the two batched forms the criteria need, and clipping into images. torchvision.ops.box_iou gives the
(N, M) matrix of two unbatched sets; these add a batch axis (all pairs per image) or pair boxes place
by place (one IoU per pair, without the matrix).

Naming: B = images, M = gt boxes per image, R = predictions per image, N = any leading shape.
"""

from __future__ import annotations

import torch
from torch import Tensor


def area(boxes: Tensor) -> Tensor:
    """(N, 4) -> (N,); boxes with x2 < x1 or y2 < y1 have area 0."""
    return (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)


def paired_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of each box in a (N, 4) with the box at the same place in b (N, 4) -> (N,)."""
    lt = torch.maximum(a[..., :2], b[..., :2])  # (N, 2)
    rb = torch.minimum(a[..., 2:], b[..., 2:])  # (N, 2)
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N,)
    return inter / (area(a) + area(b) - inter + eps)


def batched_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """All pairs within each image: a (B, M, 4), b (B, R, 4) -> (B, M, R)."""
    return paired_iou(a[:, :, None], b[:, None], eps)  # broadcast (B, M, 1, 4) with (B, 1, R, 4)


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """boxes (B, K, 4), image_sizes (B, 2) as (h, w) -> boxes clipped into each image."""
    hw = image_sizes.to(boxes.dtype)
    upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None]  # (B, 1, 4)
    return torch.minimum(boxes.clamp(min=0), upper)
