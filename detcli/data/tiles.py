"""Tiles of large images, for training on small objects at full resolution (data.tile) and for sliced inference
(eval.tile / predict.tile): overlapping windows of `size` px stepping by size x (1 - overlap), the last one of
each row and column flush with the image's edge (SAHI's slicing); an image no larger than a tile is one window.

In training every image larger than the tile becomes one record per window (the list is fixed by the annotations
alone, so the sampler and an exact resume work over tiles as over images); a box crossing a window's edge is
clipped to it and kept in every window that holds at least `min_visible` of its area, dropped (not kept as a
sliver) from the others.

Naming: M = boxes of an image, T = windows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from detcli.errors import ConfigError


@dataclass(frozen=True)
class Tiling:
    """data.tile / eval.tile / predict.tile: window side, overlap share, and (training) the least share of a box
    that a window must hold to keep it."""

    size: int = 640
    overlap: float = 0.2
    min_visible: float = 0.5

    def __post_init__(self):
        if self.size < 32 or not 0 <= self.overlap < 1 or not 0 < self.min_visible <= 1:
            raise ConfigError(f"tile: size >= 32 px, 0 <= overlap < 1 and 0 < min_visible <= 1, got size={self.size}, "
                              f"overlap={self.overlap}, min_visible={self.min_visible}.")


def tiling(node) -> Tiling | None:
    """A tile config node (None / null: no tiling) as a Tiling."""
    if node is None or node is False:
        return None
    keys = {k: v for k, v in dict(node).items() if k in ("size", "overlap", "min_visible")}
    return Tiling(**keys)


def starts(length: int, size: int, overlap: float) -> list[int]:
    """Window origins along one side: 0, step, 2 step, ..., the last at length - size (flush with the edge)."""
    if length <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    out = list(range(0, length - size, step))
    return out + [length - size]


def windows(width: int, height: int, t: Tiling) -> np.ndarray:
    """(T, 4) windows x0, y0, x1, y1 covering a width x height image, row by row."""
    xs, ys = starts(width, t.size, t.overlap), starts(height, t.size, t.overlap)
    return np.array([(x, y, min(x + t.size, width), min(y + t.size, height)) for y in ys for x in xs], dtype=np.int64)


def cut(boxes: np.ndarray, window: np.ndarray, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """The boxes (M, 4) a window holds at least `min_visible` of: (kept (M,) bool, clipped boxes (K, 4) in the
    window's pixels)."""
    x0, y0, x1, y1 = window
    clipped = np.stack([boxes[:, 0].clip(x0, x1), boxes[:, 1].clip(y0, y1),
                        boxes[:, 2].clip(x0, x1), boxes[:, 3].clip(y0, y1)], 1)  # (M, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (M,)
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])  # (M,)
    kept = (inside > 0) & (inside >= min_visible * np.maximum(area, 1e-9))
    return kept, (clipped[kept] - np.array([x0, y0, x0, y0], dtype=boxes.dtype)).astype(np.float32)


def tile_records(records: list, t: Tiling) -> list:
    """Each record larger than the tile replaced by one record per window (`window` set: x0, y0, x1, y1 of the
    annotation's pixels), its boxes cut to the window; the others unchanged."""
    out = []
    for r in records:
        if r.width <= t.size and r.height <= t.size:
            out.append(r)
            continue
        for w in windows(r.width, r.height, t):
            kept, boxes = cut(r.boxes, w, t.min_visible)
            area = None if r.area is None else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            out.append(replace(r, boxes=boxes, labels=r.labels[kept], iscrowd=r.iscrowd[kept], area=area,
                               sources=[s for s, k in zip(r.sources, kept) if k] if r.sources else [],
                               window=tuple(int(v) for v in w), width=int(w[2] - w[0]), height=int(w[3] - w[1]),
                               full_size=(r.width, r.height)))
    return out


def crop_window(image, window: tuple, full_size: tuple):
    """The window (x0, y0, x1, y1 in the annotation's pixels of a full_size (width, height) image) cut from the
    image (3, H, W) as read (its file may be stored at another size than annotated)."""
    H, W = image.shape[-2:]
    sx, sy = W / full_size[0], H / full_size[1]
    x0, y0, x1, y1 = window
    return image[:, round(y0 * sy):round(y1 * sy), round(x0 * sx):round(x1 * sx)]
