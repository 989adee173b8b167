"""FCOS target assignment, for the whole batch at once.

A point is a candidate for a gt box when it lies in the box's centre region (radius * stride around
the centre, clipped to the box; or anywhere inside the box without center sampling) and the largest
of its l,t,r,b distances falls in its level's size range. Among candidates the smallest box wins.

Naming: B = images, R = points over all levels, M = gt boxes per image (padded).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def default_size_ranges(strides: list[int]) -> list[tuple[float, float]]:
    """FCOS ranges: level i takes max(l,t,r,b) in [8*s_{i-1}, 8*s_i] (0 / inf at the ends):
    strides 8..128 -> (0,64), (64,128), (128,256), (256,512), (512,inf)."""
    uppers = [8.0 * s for s in strides[:-1]] + [math.inf]
    lowers = [0.0] + uppers[:-1]
    return list(zip(lowers, uppers))


class FCOSAssigner(nn.Module):
    def __init__(self, strides: list[int], center_radius: float | None = 1.5, size_ranges=None):
        super().__init__()
        self.strides = list(strides)
        self.center_radius = center_radius
        ranges = default_size_ranges(self.strides) if size_ranges is None else [tuple(r) for r in size_ranges]
        if len(ranges) != len(self.strides):
            raise ValueError(
                f"loss.assigner.size_ranges has {len(ranges)} ranges but the neck has {len(self.strides)} levels"
            )
        self.register_buffer("ranges", torch.tensor(ranges, dtype=torch.float32), persistent=False)  # (L, 2)

    @torch.no_grad()
    def forward(
        self,
        points: Tensor,  # (R, 2) x, y
        point_strides: Tensor,  # (R,)
        level_sizes: list[int],
        gt_boxes: Tensor,  # (B, M, 4) x1y1x2y2
        gt_valid: Tensor,  # (B, M) bool, False for padding
    ) -> Tensor:
        """Index of the matched gt box per point (B, R); -1 = background."""
        B, M = gt_valid.shape
        R = points.shape[0]
        if M == 0:
            return torch.full((B, R), -1, dtype=torch.long, device=points.device)
        ranges = torch.cat([r.expand(n, 2) for r, n in zip(self.ranges.to(points.device), level_sizes)])  # (R, 2)
        x = points[None, :, 0, None]  # (1, R, 1)
        y = points[None, :, 1, None]
        x1, y1, x2, y2 = gt_boxes.float()[:, None].unbind(-1)  # each (B, 1, M)
        left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y  # each (B, R, M)
        if self.center_radius is None:
            in_region = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
        else:
            r = point_strides[None, :, None] * self.center_radius  # (1, R, 1)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            in_region = (
                (x > torch.maximum(cx - r, x1))
                & (x < torch.minimum(cx + r, x2))
                & (y > torch.maximum(cy - r, y1))
                & (y < torch.minimum(cy + r, y2))
            )  # (B, R, M)
        max_dist = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))  # (B, R, M)
        in_range = (max_dist >= ranges[None, :, 0, None]) & (max_dist <= ranges[None, :, 1, None])
        candidate = in_region & in_range & gt_valid[:, None, :]  # (B, R, M)
        area = ((x2 - x1) * (y2 - y1)).expand(B, R, M)
        area = torch.where(candidate, area, torch.full_like(area, math.inf))
        min_area, matched = area.min(dim=2)  # (B, R): smallest box wins, first index on ties
        return torch.where(torch.isfinite(min_area), matched, torch.full_like(matched, -1))

    def reachable(self, points: Tensor, point_strides: Tensor, level_sizes: list[int], gt_boxes: Tensor,
                  gt_valid: Tensor) -> Tensor:
        """(B, M) bool: the gt boxes that keep at least one point after the assignment (ranges, center sampling
        and smaller boxes winning shared points all counted)."""
        B, M = gt_valid.shape
        matched = self(points, point_strides, level_sizes, gt_boxes, gt_valid)  # (B, R)
        hit = torch.zeros(B, M + 1, dtype=torch.bool, device=gt_valid.device)
        hit.scatter_(1, matched + 1, True)  # slot 0 collects the background points
        return hit[:, 1:] & gt_valid
