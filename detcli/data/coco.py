"""COCO-format datasets: an instances json plus a folder of images.

Category ids are mapped to contiguous labels 0..C-1 (sorted by id) and back; iscrowd boxes are left
out of training targets and kept (flagged) for evaluation; images without boxes stay as negatives.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from detcli.data.collate import collate
from detcli.data.sampler import EpochSampler
from detcli.data.transforms import train_transforms, val_transforms
from detcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) x1y1x2y2, original pixels
    labels: np.ndarray  # (n,) contiguous labels
    iscrowd: np.ndarray  # (n,) bool
    area: np.ndarray = field(default=None)  # (n,) COCO area, for small/medium/large


def load_coco_json(path: str | Path, key: str) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: annotation file '{path}' does not exist.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{key}: '{path}' is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e
    for k in ("images", "annotations", "categories"):
        if k not in data:
            raise DataError(f"{key}: '{path}' has no '{k}' list; it is not a COCO instances file.")
    return data


def parse_coco(data: dict, path: str, cat_ids: list[int]) -> tuple[list[ImageRecord], int]:
    """Records per image in file order and the number of annotations dropped as degenerate."""
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    per_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if ann.get("category_id") not in cat_to_label:
            raise DataError(
                f"'{path}': annotation id {ann.get('id')} has category_id {ann.get('category_id')}, "
                f"which is not in the file's categories {cat_ids}."
            )
        per_image.setdefault(ann["image_id"], []).append(ann)
    records, dropped = [], 0
    for img in data["images"]:
        anns = per_image.get(img["id"], [])
        xywh = np.array([a.get("bbox", [math.nan] * 4) for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        w, h = float(img["width"]), float(img["height"])
        boxes = np.clip(boxes, 0, [w, h, w, h])  # a box reaching past the border is cut at it
        ok = np.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        dropped += int((~ok).sum())
        keep = [a for a, k in zip(anns, ok) if k]
        records.append(
            ImageRecord(
                image_id=img["id"],
                file_name=img["file_name"],
                height=int(img["height"]),
                width=int(img["width"]),
                boxes=boxes[ok].astype(np.float32),
                labels=np.array([cat_to_label[a["category_id"]] for a in keep], dtype=np.int64),
                iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in keep], dtype=bool),
                area=np.array([a.get("area", (b[2] - b[0]) * (b[3] - b[1])) for a, b in zip(keep, boxes[ok])],
                              dtype=np.float32),
            )
        )
    return records, dropped


class CocoDataset(Dataset):
    """(image uint8 (3, h, w), target {boxes, labels} after transforms, meta) per image.

    meta holds image_id, file_name, orig_size (H, W) and the original gt for evaluation.
    """

    def __init__(self, records: list[ImageRecord], image_dir: str | Path, transforms, train: bool):
        self.records = records
        self.image_dir = Path(image_dir).expanduser()
        self.transforms = transforms
        self.train = train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]):
        i, sample_seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records[i]
        image = read_image(self.image_dir / rec.file_name)
        H, W = image.shape[-2:]
        if (H, W) != (rec.height, rec.width):
            scale = np.array([W / rec.width, H / rec.height] * 2, dtype=np.float32)
        else:
            scale = np.ones(4, dtype=np.float32)
        keep = ~rec.iscrowd if self.train else np.ones(len(rec.labels), dtype=bool)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(rec.boxes[keep] * scale), format="XYXY", canvas_size=(H, W)
            ),
            "labels": torch.from_numpy(rec.labels[keep]),
        }
        with torch.random.fork_rng(devices=[], enabled=sample_seed is not None):
            if sample_seed is not None:
                torch.manual_seed(sample_seed)
            image, target = self.transforms(tv_tensors.Image(image), target)
        meta = {"image_id": rec.image_id, "file_name": rec.file_name, "orig_size": (H, W)}
        if not self.train:
            meta["gt"] = {
                "boxes": torch.from_numpy(rec.boxes * scale),
                "labels": torch.from_numpy(rec.labels),
                "iscrowd": torch.from_numpy(rec.iscrowd.astype(np.int64)),
                "area": torch.from_numpy(rec.area),
            }
        return image.as_subclass(torch.Tensor), target, meta


def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 (3, H, W); a missing or undecodable file is a DataError naming it."""
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise DataError(f"image file '{path}' does not exist.") from None
    except Exception as e:
        raise DataError(f"image file '{path}' cannot be decoded ({e}); it may be truncated or not an image.") from e


class CocoData:
    """The data config's object: datasets, loaders and the class list of a COCO-format dataset."""

    def __init__(
        self,
        train_ann: str | None = None,
        train_images: str | None = None,
        val_ann: str | None = None,
        val_images: str | None = None,
        image_size=(800, 1333),
        size_divisible: int = 32,
        hflip: float = 0.5,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
    ):
        self.paths = {"train_ann": train_ann, "train_images": train_images, "val_ann": val_ann,
                      "val_images": val_images}
        self.image_size = image_size if isinstance(image_size, int) else tuple(image_size)
        self.size_divisible = size_divisible
        self.hflip = hflip
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()

    def path(self, key: str) -> str:
        value = self.paths[key]
        if value in (None, "", "???"):
            raise ConfigError(f"data.{key} is not set: give data.{key}=PATH on the command line.")
        return str(Path(value).expanduser())

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

    @property
    def cat_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["id"])) for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def dataset(self, split: str, cat_ids: list[int] | None = None) -> CocoDataset:
        """split 'train' or 'val'; cat_ids fixes the label order (e.g. a checkpoint's)."""
        data = self._train_json if split == "train" else self._val_json
        ann_key = f"data.{split}_ann"
        cat_ids = list(cat_ids or self.cat_ids)
        file_ids = sorted(int(c["id"]) for c in data["categories"])
        if not set(file_ids) <= set(cat_ids):
            raise DataError(f"{ann_key}: '{self.path(f'{split}_ann')}' has category ids {file_ids}, but the "
                            f"model was built for {cat_ids}.")
        records, dropped = parse_coco(data, self.path(f"{split}_ann"), cat_ids)
        if dropped:
            log.warning("%s: %d boxes with zero or negative width/height or NaN were dropped", ann_key, dropped)
        tf = train_transforms(self.image_size, self.hflip) if split == "train" else val_transforms(self.image_size)
        return CocoDataset(records, self.path(f"{split}_images"), tf, train=split == "train")

    def train_loader(self, dataset: CocoDataset, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        sampler = EpochSampler(len(dataset), seed, shuffle=True, rank=rank, world_size=world_size)
        return self._loader(dataset, sampler, self.batch_size, drop_last=True)

    def val_loader(self, dataset: CocoDataset, rank: int = 0, world_size: int = 1) -> DataLoader:
        sampler = EpochSampler(len(dataset), 0, shuffle=False, rank=rank, world_size=world_size)
        return self._loader(dataset, sampler, self.val_batch_size, drop_last=False)

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_Collate(self.size_divisible),
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            generator=torch.Generator(),
        )


class _Collate:
    def __init__(self, size_divisible: int):
        self.size_divisible = size_divisible

    def __call__(self, samples):
        return collate(samples, self.size_divisible)
