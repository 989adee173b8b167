"""YOLO-format datasets as ultralytics writes them: a `data.yaml` with `path`, `train`, `val` (image
folders or .txt lists of images, relative to `path`) and `names`; one `labels/<stem>.txt` per image
(the images->labels path rule), a line `class cx cy w h` in 0-1 units per box. The class index is the
category id; a checkpoint's classes are found by name, so another data.yaml may list them in another order."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from detcli.data.base import DetectionData, ImageRecord, require
from detcli.data.checks import Defect
from detcli.data.images import IMAGE_SUFFIXES
from detcli.errors import DataError


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last /images/ of the path becomes /labels/, the suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(classes (n,), normalised cx cy w h (n, 4), [(line, problem)]) of a label file; no file means no
    boxes. A bad line keeps its place as a NaN box with class -1, so that it can be reported and left out."""
    if not path.is_file():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32), []
    classes, boxes, problems = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        cls, values, problem = -1, [float("nan")] * 4, None
        if len(fields) != 5:
            problem = f"expected 'class cx cy w h' (5 fields), got {len(fields)}"
        else:
            try:
                cls, values = int(fields[0]), [float(v) for v in fields[1:]]
            except ValueError:
                problem = f"not numbers: '{line.strip()}'"
            else:
                if not 0 <= cls < num_classes:
                    problem, cls = f"class index {cls} is outside names (0..{num_classes - 1})", -1
        if problem:
            problems.append((n, problem))
        classes.append(cls)
        boxes.append(values)
    return np.array(classes, dtype=np.int64), np.array(boxes, dtype=np.float32).reshape(-1, 4), problems


class YoloData(DetectionData):
    match_classes_by = "name"

    def __init__(self, yaml_file: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.yaml_file = Path(require(yaml_file, "data.yaml_file"))

    @cached_property
    def _spec(self) -> dict:
        if not self.yaml_file.is_file():
            raise DataError(f"data.yaml_file: '{self.yaml_file}' does not exist.")
        try:
            spec = yaml.safe_load(self.yaml_file.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"data.yaml_file: '{self.yaml_file}' is not valid YAML ({e}).") from e
        for key in ("train", "val", "names"):
            if key not in (spec or {}):
                raise DataError(f"data.yaml_file: '{self.yaml_file}' has no '{key}' entry.")
        return spec

    @property
    def base(self) -> Path:
        path = Path(self._spec.get("path") or ".")
        return path if path.is_absolute() else (self.yaml_file.parent / path)

    @cached_property
    def categories(self) -> list[dict]:
        names = self._spec["names"]
        items = sorted(names.items()) if isinstance(names, dict) else enumerate(names)
        return [{"id": int(i), "name": str(n)} for i, n in items]

    def _images(self, split: str) -> list[Path]:
        entries = self._spec[split]
        files: list[Path] = []
        for entry in entries if isinstance(entries, list) else [entries]:
            p = self.base / entry
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            elif p.suffix == ".txt" and p.is_file():
                files += [self.base / line.strip() for line in p.read_text().splitlines() if line.strip()]
            else:
                raise DataError(f"'{self.yaml_file}': {split} entry '{entry}' is neither a folder nor a .txt list "
                                f"under '{self.base}'.")
        return files

    def load_split(self, split: str, cat_ids: list[int]) -> tuple[list[ImageRecord], Path, list[Defect]]:
        label_of = {c: i for i, c in enumerate(cat_ids)}
        records, defects = [], []
        for i, image in enumerate(self._images(split)):
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except OSError as e:  # the size is needed to read the labels: the image is a defect
                defects.append(Defect(str(image), "", f"image cannot be read ({e})", i))
                width = height = 0
            label_file = label_path(image)
            classes, cxcywh, problems = read_labels(label_file, len(self.categories))
            lines = [n for n, line in enumerate(_lines(label_file), 1) if line.split()]
            for n, problem in problems:
                defects.append(Defect(str(label_file), f"line {n}", problem, i, lines.index(n)))
            xy, wh = cxcywh[:, :2], cxcywh[:, 2:]
            boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) * np.array([width, height] * 2, dtype=np.float32)
            boxes = boxes.astype(np.float32)
            records.append(ImageRecord(
                image_id=i + 1, file_name=str(image.relative_to(self.base)) if image.is_relative_to(self.base)
                else str(image), height=height, width=width, boxes=boxes,
                labels=np.array([label_of.get(int(c), -1) for c in classes], dtype=np.int64),
                iscrowd=np.zeros(len(classes), dtype=bool),
                area=(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                sources=[f"line {n}" for n in lines], ann_file=str(label_file),
            ))
        return records, self.base, defects


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []
