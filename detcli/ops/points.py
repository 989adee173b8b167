"""Grid points of a feature pyramid, the box coders of the anchor-free heads, and the per-input-size
cache of such grids (GridCache, which the anchors of detcli/ops/anchors.py use too).

Naming: B = images, R = points over all levels, L = levels.
"""

import torch
from torch import Tensor


def grid_points(sizes: list[tuple[int, int]], strides: list[int], device=None,
                offset: float = 0.5) -> tuple[Tensor, Tensor]:
    """Centres of every feature-map cell (offset 0.5; torchvision's FCOS puts its points on the cells'
    top-left corners, offset 0), level after level, in input-image pixels.

    Returns points (R, 2) as (x, y) and the stride of each point (R,).
    """
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * s  # (h,)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * s  # (w,)
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


def offsets_to_boxes(points: Tensor, strides: Tensor, reg: Tensor) -> Tensor:
    """YOLOX's coder: (dx, dy, log w, log h) in units of the point's stride (..., R, 4), points (R, 2) and
    strides (R,) -> boxes (..., R, 4) as x1y1x2y2 with centre point + d * stride, size exp(log) * stride.

    YOLOX offsets from the cell's corner; detcli's points are cell centres, so dx here is YOLOX's - 0.5.
    """
    s = strides[:, None]  # (R, 1)
    centre = points + reg[..., :2] * s  # (..., R, 2)
    half = reg[..., 2:].clamp(max=10.0).exp() * s / 2  # (..., R, 2); e^10 strides: no overflow to inf
    return torch.cat([centre - half, centre + half], dim=-1)


def boxes_to_offsets(points: Tensor, strides: Tensor, boxes: Tensor, eps: float = 1e-8) -> Tensor:
    """Inverse of offsets_to_boxes (the L1 target): boxes (..., R, 4) -> (dx, dy, log w, log h) (..., R, 4)."""
    s = strides[:, None]  # (R, 1)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (..., R, 2)
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)  # (..., R, 2)
    return torch.cat([(centre - points) / s, torch.log(size / s + eps)], dim=-1)


class GridCache:
    """A constant of the input size (grid points, anchors) computed by `make(sizes, device)` once per
    feature sizes and device; recomputed when tracing or exporting so the graph holds the ops, not a
    constant."""

    def make(self, sizes: list[tuple[int, int]], device):
        raise NotImplementedError

    def __call__(self, sizes: list[tuple[int, int]], device):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.make(sizes, device)
        key = (tuple(sizes), str(device))
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = self.make(sizes, device)
        return cache[key]


class PointGrid(GridCache):
    """grid_points for a head's strides (at `offset` cells from each cell's corner): points (R, 2) and their
    strides (R,)."""

    def __init__(self, strides: list[int], offset: float = 0.5):
        self.strides = list(strides)
        self.offset = float(offset)

    def make(self, sizes: list[tuple[int, int]], device) -> tuple[Tensor, Tensor]:
        return grid_points(sizes, self.strides, device, self.offset)

    def priors(self, sizes: list[tuple[int, int]], device) -> dict:
        """A dense head's constants: points (R, 2), their strides (R,) and the points per level [L]."""
        points, strides = self(sizes, device)
        return {"points": points, "strides": strides, "level_sizes": [h * w for h, w in sizes]}
