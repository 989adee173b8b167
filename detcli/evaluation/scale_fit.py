"""The scale fit of a dataset to a detector (`detcli data check head=...`): the share of the ground-truth boxes
that can get at least one positive at all under the head's assignment at the training input size, i.e. the
recall ceiling before any training (FCOS: regression ranges + center sampling, a smaller box winning a shared
point; YOLOX: SimOTA's centre prior; Faster R-CNN: an anchor at the RPN matcher's IoU), overall, per class and
per COCO size bucket; and the setting changes that raise it (image size, ranges, radius, anchor sizes), each
tried by building the detector again with that one change.

The boxes are taken at the nominal training size: the keep-ratio resize of `data.image_size` (the letterbox
square with `data.letterbox`), padded to `data.size_divisible`; a box under 1 px after the resize is dropped by
the training transforms and counts as unreachable; crowd boxes are not training targets and are left out.
Mosaic and multiscale rescale the images at random around that size and are not modelled. The detector's
`reachable` reads only the head's priors (points, anchors) and the criterion's rule: no network runs.

Naming: B = images, M = gt boxes per image (padded), n = boxes over all images.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from detcli.build import build_model
from detcli.data.collate import canvas_size, padded_size
from detcli.data.transforms import image_size_of, resized_size

SIZE_BUCKETS = ("small", "medium", "large")  # COCO areas in original pixels: < 32^2, < 96^2, >= 96^2
MAX_ELEMENTS = 1 << 22  # (images x gt boxes x priors) assigned at once: the batch is cut to stay under it


@dataclass
class Fit:
    """Every counted box of the records, in their order: reachable (n,) bool, labels (n,), size bucket (n,)."""

    reached: np.ndarray
    labels: np.ndarray
    buckets: np.ndarray

    @property
    def ceiling(self) -> float:
        return float(self.reached.mean()) if len(self.reached) else 1.0

    def table(self, class_names: list[str]) -> dict:
        """{"all": {...}, "per_class": {name: {...}}}, each {boxes, ceiling, small, medium, large} where a size
        entry is that bucket's ceiling (null without boxes of that size)."""

        def row(mask: np.ndarray) -> dict:
            out = {"boxes": int(mask.sum()), "ceiling": _share(self.reached[mask])}
            for b, name in enumerate(SIZE_BUCKETS):
                out[name] = _share(self.reached[mask & (self.buckets == b)])
            return out

        every = np.ones(len(self.reached), dtype=bool)
        return {"all": row(every), "per_class": {n: row(self.labels == k) for k, n in enumerate(class_names)}}


def _share(reached: np.ndarray) -> float | None:
    return round(float(reached.mean()), 4) if len(reached) else None


def fit(cfg: DictConfig, records: list, num_classes: int) -> Fit:
    """The recall ceiling of `records` (ImageRecords, original pixels) for the detector and data of `cfg`."""
    for key in ("backbone.pretrained", "backbone.weights"):  # the priors need no weights: never download any
        if OmegaConf.select(cfg, key, default=None):
            cfg = with_change(cfg, key, None if key.endswith("weights") else False)
    model = build_model(cfg, num_classes).eval()
    data = cfg.data
    image_size = image_size_of(data.image_size)
    canvas = canvas_size(image_size, bool(data.get("letterbox", False)))
    divisible = int(data.get("size_divisible", 32))
    groups: dict[tuple[int, int], list] = {}  # input (H, W) -> [(record index, boxes at input scale, keep)]
    counted = []  # per record: its non-crowd boxes' (labels, buckets)
    for i, r in enumerate(records):
        own = ~r.iscrowd.astype(bool)
        boxes, labels = r.boxes[own].astype(np.float32), r.labels[own]
        area = r.area[own] if r.area is not None else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        counted.append((labels, np.digitize(area, [32**2, 96**2])))
        h, w = resized_size(r.height, r.width, image_size)
        scaled = boxes * np.array([w / r.width, h / r.height] * 2, dtype=np.float32)  # (n, 4)
        # the training transforms clamp the boxes into the image and drop those under 1 px
        scaled = np.clip(scaled, 0, [w, h, w, h]).astype(np.float32)
        keep = ((scaled[:, 2] - scaled[:, 0]) >= 1) & ((scaled[:, 3] - scaled[:, 1]) >= 1)
        groups.setdefault(padded_size(h, w, divisible, canvas), []).append((i, scaled, keep))
    reached = [np.zeros(len(labels), dtype=bool) for labels, _ in counted]
    for size, items in groups.items():
        priors_per_image = 4 * size[0] * size[1] // 16  # an upper bound of points / anchors, for the batch size
        items.sort(key=lambda item: -len(item[1]))  # most boxes first: a batch's first image sets its M
        start = 0
        while start < len(items):
            count = max(1, MAX_ELEMENTS // (max(1, len(items[start][1])) * priors_per_image))
            batch = items[start : start + count]
            start += len(batch)
            for (i, _, keep), hit in zip(batch, _reachable(model, [(b, k) for _, b, k in batch], size)):
                reached[i] = hit & keep
    labels = np.concatenate([c[0] for c in counted]) if counted else np.zeros(0, dtype=np.int64)
    buckets = np.concatenate([c[1] for c in counted]) if counted else np.zeros(0, dtype=np.int64)
    return Fit(np.concatenate(reached) if reached else np.zeros(0, dtype=bool), labels, buckets)


def _reachable(model, batch: list[tuple[np.ndarray, np.ndarray]], size: tuple[int, int]) -> list[np.ndarray]:
    """Per image of `batch` [(boxes (n, 4) at input scale, keep (n,))]: reachable (n,) bool."""
    M = max(len(b) for b, _ in batch)
    if M == 0:
        return [np.zeros(0, dtype=bool) for _ in batch]
    boxes = torch.zeros(len(batch), M, 4)  # (B, M, 4)
    labels = torch.full((len(batch), M), -1, dtype=torch.long)  # (B, M); only validity matters here
    for j, (b, keep) in enumerate(batch):
        boxes[j, : len(b)] = torch.from_numpy(b)
        labels[j, : len(b)] = torch.where(torch.from_numpy(keep), 0, -1)
    hit = model.reachable(boxes, labels, size).numpy()  # (B, M)
    return [hit[j, : len(b)] for j, (b, _) in enumerate(batch)]


def scaled(value, factor: float):
    """A numeric config value (a number or nested lists of numbers) times `factor`: ints stay whole (at least 1),
    0 and infinity stay; None when the value is not numeric (null: a default the config does not spell out)."""
    if isinstance(value, (list, tuple, ListConfig)):
        items = [scaled(v, factor) for v in value]
        return None if any(v is None for v in items) else items
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return max(1, round(value * factor)) if value > 0 else value
    return value if math.isinf(value) else round(value * factor, 4)


def candidates(cfg: DictConfig, tries: dict) -> list[tuple[str, object]]:
    """The one-key changes to try: for each `key: [factors]` of `tries` whose key the config has with a numeric
    value, (key, the value times each factor); keys a head does not have are skipped."""
    out = []
    for key, factors in tries.items():
        value = OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        for f in factors:
            new = scaled(value, float(f))
            if new is not None and new != value:
                out.append((key, new))
    return out


def with_change(cfg: DictConfig, key: str, value) -> DictConfig:
    changed = copy.deepcopy(cfg)
    OmegaConf.update(changed, key, value, merge=False)
    return changed


def override(key: str, value) -> str:
    """`key=value` as a command line takes it."""
    text = str(value).replace(" ", "").replace("'", "")
    return f"{key}={text}"
