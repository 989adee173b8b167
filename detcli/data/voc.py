"""Pascal VOC datasets: `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/{train,val}.txt`, or a
flat folder of image + xml pairs as labelling tools write it.

Class names come from `data.classes` or, sorted, from the XML files; their category ids are 1..C in
that order. Those ids depend on which files are read, so a checkpoint's classes are found by name
(`DetectionData.label_order`). Pixel indexes are made 0-based (x1 = xmin - 1, as detectron2 reads
VOC). `difficult` objects are left out of training and ignored in evaluation (flagged like COCO's iscrowd).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from functools import cached_property
from pathlib import Path

import numpy as np

from detcli.data.base import DetectionData, ImageRecord, require
from detcli.data.checks import Defect
from detcli.data.images import IMAGE_SUFFIXES
from detcli.errors import DataError

log = logging.getLogger(__name__)


def parse_voc_xml(path: Path) -> dict:
    """{filename, width, height, objects: [(name, difficult, [x1, y1, x2, y2])]} of one annotation file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"'{path}' is not valid XML (line {e.position[0]}: {e}).") from e
    size = root.find("size")
    try:
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name").strip(), obj.findtext("difficult", "0").strip() == "1",
                            [x1 - 1, y1 - 1, x2, y2]))
    except (AttributeError, TypeError, ValueError) as e:
        raise DataError(f"'{path}': a <size> or <object> entry is missing a field or has a non-number ({e}).") from e
    return {"filename": root.findtext("filename"), "width": width, "height": height, "objects": objects}


class VocData(DetectionData):
    match_classes_by = "name"

    def __init__(self, root: str | None = None, train_list: str | None = None, val_list: str | None = None,
                 classes: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(require(root, "data.root"))
        self.lists = {"train": train_list, "val": val_list}
        self.classes = list(classes) if classes else None

    @cached_property
    def _layout(self) -> tuple[Path, Path]:
        """(annotation folder, image folder): VOC's own layout, or one flat folder."""
        if (self.root / "Annotations").is_dir():
            return self.root / "Annotations", self.root / "JPEGImages"
        if not self.root.is_dir():
            raise DataError(f"data.root: '{self.root}' is not a folder.")
        return self.root, self.root

    def _stems(self, split: str) -> list[str]:
        listed = self.lists[split] or self.root / "ImageSets" / "Main" / f"{split}.txt"
        if Path(listed).is_file():
            return [line.split()[0] for line in Path(listed).read_text().splitlines() if line.strip()]
        if self.lists[split]:
            raise DataError(f"data.{split}_list: '{listed}' does not exist.")
        log.warning("data=voc: no split file for '%s' (%s): every annotated image is used", split, listed)
        return sorted(p.stem for p in self._layout[0].glob("*.xml"))

    @cached_property
    def _parsed(self) -> dict[str, dict | DataError]:
        """stem -> parsed annotation, or the error that makes it unreadable (a defect of that image)."""
        ann_dir = self._layout[0]
        out: dict = {}
        for stem in sorted(set(self._stems("train")) | set(self._stems("val"))):
            xml = ann_dir / f"{stem}.xml"
            try:
                if not xml.is_file():
                    raise DataError("the split list names it, but the annotation file does not exist")
                out[stem] = parse_voc_xml(xml)
            except DataError as e:
                out[stem] = e
        return out

    @cached_property
    def categories(self) -> list[dict]:
        names = self.classes or sorted({o[0] for a in self._parsed.values() if isinstance(a, dict)
                                        for o in a["objects"]})
        return [{"id": i + 1, "name": n} for i, n in enumerate(names)]

    def load_split(self, split: str, cat_ids: list[int]) -> tuple[list[ImageRecord], Path, list[Defect]]:
        label_of = {c["name"]: cat_ids.index(c["id"]) for c in self.categories if c["id"] in cat_ids}
        ann_dir, image_dir = self._layout
        records, defects = [], []
        for i, stem in enumerate(self._stems(split)):
            ann = self._parsed[stem]
            xml = str(ann_dir / f"{stem}.xml")
            if isinstance(ann, DataError):
                defects.append(Defect(xml, "", str(ann), i))
                ann = {"filename": None, "width": 0, "height": 0, "objects": []}
            for j, o in enumerate(ann["objects"]):
                if o[0] not in label_of:
                    defects.append(Defect(xml, f"object {j + 1}", f"class '{o[0]}' is not in data.classes "
                                                                   f"{list(label_of)}", i, j))
            boxes = np.array([o[2] for o in ann["objects"]], dtype=np.float32).reshape(-1, 4)
            records.append(ImageRecord(
                image_id=i + 1, file_name=_image_name(image_dir, stem, ann["filename"]),
                height=ann["height"], width=ann["width"], boxes=boxes,
                labels=np.array([label_of.get(o[0], -1) for o in ann["objects"]], dtype=np.int64),
                iscrowd=np.array([o[1] for o in ann["objects"]], dtype=bool),
                area=(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                sources=[f"object {j + 1}" for j in range(len(boxes))], ann_file=xml,
            ))
        return records, image_dir, defects


def _image_name(image_dir: Path, stem: str, filename: str | None) -> str:
    if filename and (image_dir / filename).is_file():
        return filename
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (f"{stem}{suffix}", f"{stem}{suffix.upper()}"):
            if (image_dir / candidate).is_file():
                return candidate
    return filename or f"{stem}.jpg"  # reported as missing when read
