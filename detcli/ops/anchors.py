"""Anchor boxes of a feature pyramid, as torchvision's AnchorGenerator and detectron2's
DefaultAnchorGenerator lay them out: per level, one box per (size, aspect ratio) centred on each cell's
top-left corner (offset 0), location-major with the anchors of a location consecutive.

Naming: N = anchors over all levels, A = anchors per location, L = levels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detcli.ops.points import GridCache


def cell_anchors(sizes: list[float], aspect_ratios: list[float]) -> Tensor:
    """(A, 4) boxes centred on 0, A = len(aspect_ratios) x len(sizes), ratio-major; ratio = h / w, area =
    size^2; rounded to whole pixels as torchvision does."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)  # (S,)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)  # (Q,)
    h_ratios = ratios.sqrt()
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()  # (A, 4)


def grid_anchors(feature_sizes: list[tuple[int, int]], strides: list[int], cells: list[Tensor],
                 device=None) -> Tensor:
    """Every level's cell anchors shifted to every location: (N, 4) x1y1x2y2 in input pixels."""
    out = []
    for (h, w), s, cell in zip(feature_sizes, strides, cells):
        ys = torch.arange(h, device=device, dtype=torch.float32) * s  # (h,)
        xs = torch.arange(w, device=device, dtype=torch.float32) * s  # (w,)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (h*w, 1, 4)
        out.append((shifts + cell.to(device)[None]).reshape(-1, 4))  # (h*w*A, 4)
    return torch.cat(out)


class AnchorGrid(GridCache):
    """The anchors of a head's levels, cached per input size: `sizes[l]` (one or more box sizes of level l)
    x `aspect_ratios`. Calling it with the feature sizes returns anchors (N, 4)."""

    def __init__(self, strides: list[int], sizes: list, aspect_ratios: list[float]):
        if len(sizes) != len(strides):
            raise ValueError(f"head.anchor_sizes has {len(sizes)} entries for {len(strides)} pyramid levels "
                             f"(strides {list(strides)}): give one size (or a list of sizes) per level")
        self.strides = list(strides)
        self.cells = [cell_anchors([s] if isinstance(s, (int, float)) else list(s), list(aspect_ratios))
                      for s in sizes]  # per level (A, 4)
        per_level = {len(c) for c in self.cells}
        if len(per_level) != 1:
            raise ValueError("head.anchor_sizes: every level needs the same number of sizes (one shared RPN conv)")
        self.num_anchors = per_level.pop()  # A

    def make(self, sizes: list[tuple[int, int]], device) -> Tensor:
        return grid_anchors(sizes, self.strides, self.cells, device)
