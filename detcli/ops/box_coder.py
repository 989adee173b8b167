"""The R-CNN box coder (Girshick et al. 2014), as torchvision's BoxCoder and detectron2's
Box2BoxTransform: a box relative to a reference box as (dx, dy, dw, dh) = weights x (centre shift / ref
size, log of the size ratio). The RPN codes against anchors with weights (1, 1, 1, 1), the box head
against proposals with (10, 10, 5, 5).

Naming: N = any leading shape (broadcast between references and boxes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
SCALE_CLAMP = math.log(1000.0 / 16)  # largest dw, dh decoded: a box at most 62.5x its reference


def _centres_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]  # (N,)
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(reference: Tensor, boxes: Tensor, weights=RPN_WEIGHTS) -> Tensor:
    """reference (N, 4), boxes (N, 4) x1y1x2y2 -> deltas (N, 4)."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centres_sizes(reference)
    gx, gy, gw, gh = _centres_sizes(boxes)
    return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh,
                        ww * torch.log(gw / rw), wh * torch.log(gh / rh)], dim=-1)  # (N, 4)


def decode(reference: Tensor, deltas: Tensor, weights=RPN_WEIGHTS, scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """reference (N, 4) x1y1x2y2, deltas (N, 4) -> boxes (N, 4) x1y1x2y2."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centres_sizes(reference)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy  # (N,)
    dw = (deltas[..., 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[..., 3] / wh).clamp(max=scale_clamp)
    cx, cy = dx * rw + rx, dy * rh + ry  # (N,)
    half_w, half_h = 0.5 * torch.exp(dw) * rw, 0.5 * torch.exp(dh) * rh
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)  # (N, 4)
