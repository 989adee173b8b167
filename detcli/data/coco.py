"""COCO-format datasets: an instances json plus a folder of images.

Category ids are mapped to contiguous labels 0..C-1 (sorted by id) and back; iscrowd boxes are left
out of training targets and kept (flagged) for evaluation; images without boxes stay as negatives.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path

import numpy as np

from detcli.data.base import DetectionData, ImageRecord, require
from detcli.data.checks import Defect
from detcli.errors import DataError


def read_json(path: str | Path, key: str, what: str = "annotation file"):
    """A JSON file named by config key `key`; a missing file or bad JSON is a DataError naming both."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: {what} '{path}' does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{key}: '{path}' is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e


def load_coco_json(path: str | Path, key: str) -> dict:
    data = read_json(path, key)
    for k in ("images", "annotations", "categories"):
        if k not in data:
            raise DataError(f"{key}: '{path}' has no '{k}' list; it is not a COCO instances file.")
    return data


def parse_coco(data: dict, path: str, cat_ids: list[int]) -> tuple[list[ImageRecord], list[Defect]]:
    """Records per image in file order (every box, bad ones included) and the defects found."""
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    defects: list[Defect] = []
    image_index: dict = {}
    for i, img in enumerate(data["images"]):
        if img.get("id") in image_index:
            defects.append(Defect(path, f"image id {img.get('id')}", "duplicate image id", i))
        image_index.setdefault(img.get("id"), i)
    per_image: dict[int, list[dict]] = {}
    seen_ann: set = set()
    for ann in data["annotations"]:
        if ann.get("image_id") not in image_index:
            defects.append(Defect(path, f"annotation id {ann.get('id')}",
                                  f"points at image_id {ann.get('image_id')}, which is not in 'images'"))
            continue
        per_image.setdefault(image_index[ann["image_id"]], []).append(ann)
    records = []
    for i, img in enumerate(data["images"]):
        if not all(k in img for k in ("id", "file_name", "width", "height")):
            raise DataError(f"'{path}': images[{i}] lacks one of id, file_name, width, height: {img}.")
        anns = per_image.get(i, [])
        xywh = np.array([_bbox(a) for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        for j, a in enumerate(anns):
            where = f"annotation id {a.get('id')}"
            if a.get("id") in seen_ann:
                defects.append(Defect(path, where, "duplicate annotation id", i, j))
            seen_ann.add(a.get("id"))
            if a.get("category_id") not in cat_to_label:
                defects.append(Defect(path, where, f"unknown category_id {a.get('category_id')} (categories: "
                                                   f"{cat_ids})", i, j))
        records.append(ImageRecord(
            image_id=img["id"], file_name=img["file_name"], height=int(img["height"]), width=int(img["width"]),
            boxes=boxes,
            labels=np.array([cat_to_label.get(a.get("category_id"), -1) for a in anns], dtype=np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            area=np.array([a.get("area", (b[2] - b[0]) * (b[3] - b[1])) for a, b in zip(anns, boxes)],
                          dtype=np.float32).reshape(-1),
            sources=[f"annotation id {a.get('id')}" for a in anns], ann_file=path,
        ))
    return records, defects


def _bbox(ann: dict) -> list[float]:
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return [math.nan] * 4
    try:
        return [float(v) for v in box]
    except (TypeError, ValueError):
        return [math.nan] * 4


class CocoData(DetectionData):
    """A COCO-format dataset: `train_ann` / `val_ann` jsons and their image folders."""

    def __init__(self, train_ann: str | None = None, train_images: str | None = None, val_ann: str | None = None,
                 val_images: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.paths = {"train_ann": train_ann, "train_images": train_images, "val_ann": val_ann,
                      "val_images": val_images}

    def path(self, key: str) -> str:
        return require(self.paths[key], f"data.{key}")

    @cached_property
    def _train_json(self) -> dict:
        return load_coco_json(self.path("train_ann"), "data.train_ann")

    @cached_property
    def _val_json(self) -> dict:
        return load_coco_json(self.path("val_ann"), "data.val_ann")

    @cached_property
    def categories(self) -> list[dict]:
        data = self._train_json if self.paths["train_ann"] not in (None, "", "???") else self._val_json
        return sorted(data["categories"], key=lambda c: c["id"])

    def load_split(self, split: str, cat_ids: list[int]) -> tuple[list[ImageRecord], Path]:
        data = self._train_json if split == "train" else self._val_json
        ann_key = f"data.{split}_ann"
        file_ids = sorted(int(c["id"]) for c in data["categories"])
        if not set(file_ids) <= set(cat_ids):
            raise DataError(f"{ann_key}: '{self.path(f'{split}_ann')}' has category ids {file_ids}, but the "
                            f"model was built for {cat_ids}.")
        records, defects = parse_coco(data, self.path(f"{split}_ann"), cat_ids)
        return records, Path(self.path(f"{split}_images")), defects
