"""Grid points of a feature pyramid and the ltrb box coder used by anchor-free heads.

Naming: B = images, R = points over all levels, L = levels.
"""

import torch
from torch import Tensor


def grid_points(sizes: list[tuple[int, int]], strides: list[int], device=None) -> tuple[Tensor, Tensor]:
    """Centres of every feature-map cell, level after level, in input-image pixels.

    Returns points (R, 2) as (x, y) and the stride of each point (R,).
    """
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s  # (h,)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s  # (w,)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))  # (h*w, 2)
        point_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(points), torch.cat(point_strides)


def ltrb_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Distances (..., R, 4) from points (R, 2) to the box sides -> boxes (..., R, 4) as x1y1x2y2."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def boxes_to_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of ltrb_to_boxes: points (R, 2) [broadcast], boxes (..., 4) -> distances (..., 4)."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
