"""Plain images for `detcli predict`: a file, a folder or a glob pattern, preprocessed as the checkpoint's
data config says, with the dataset's image ids when an annotation file is given."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from detcli.data.base import read_image
from detcli.data.collate import Collate, canvas_size
from detcli.data.transforms import image_size_of, val_transforms
from detcli.errors import DataError

log = logging.getLogger("detcli")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def find_images(source: str) -> list[Path]:
    """Image files of a file, a folder (searched recursively) or a glob pattern (folders it matches included)."""
    path = Path(source).expanduser()
    if not path.exists() and any(c in source for c in "*?["):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    elif path.exists():
        matches = [path]
    else:
        raise DataError(f"source '{source}' is neither an image file, a folder nor a glob pattern that matches.")
    files = []
    for m in matches:
        files += sorted(p for p in m.rglob("*") if p.is_file()) if m.is_dir() else [m]
    files = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"source '{source}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return files


class ImageFiles(Dataset):
    """(image uint8 after `transforms`, empty target, meta with file_name, image_id, orig_size) per file;
    `image_ids` default to 1, 2, ... in file order."""

    def __init__(self, files: list[Path], transforms, image_ids: list[int] | None = None):
        self.files = files
        common = Path(os.path.commonpath([str(f.resolve().parent) for f in files])) if files else Path()
        self.relative = [str(f.resolve().relative_to(common)) for f in files]  # unique names for outputs
        self.transforms = transforms
        self.image_ids = image_ids or list(range(1, len(files) + 1))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = read_image(self.files[i])
        H, W = image.shape[-2:]
        resized = self.transforms(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
        meta = {"image_id": self.image_ids[i], "file_name": str(self.files[i]), "orig_size": (H, W),
                "relative": self.relative[i]}
        return resized, target, meta


class ReadableImageFiles(ImageFiles):
    """ImageFiles that never fail: a file that cannot be read, decoded or transformed gives
    (None, None, {"file_name", "reason"}), for `SkipUnreadable` to set aside."""

    def __getitem__(self, i: int):
        try:
            return super().__getitem__(i)
        except Exception as e:  # noqa: BLE001 - one bad file is reported and skipped, never the end of the run
            return None, None, {"file_name": str(self.files[i]), "reason": str(e)}


class SkipUnreadable:
    """A collate over ReadableImageFiles samples: {"batch": the readable ones collated (None if none),
    "skipped": [{"file_name", "reason"}, ...]}."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples: list) -> dict:
        good = [s for s in samples if s[0] is not None]
        skipped = [s[2] for s in samples if s[0] is None]
        return {"batch": self.collate(good) if good else None, "skipped": skipped}


def preprocessing(data_cfg: DictConfig, pad_value: tuple) -> tuple[v2.Transform, Collate]:
    """The val transforms and the collate a (checkpoint's) data config describes, built without reading
    its dataset: `val_transforms` (else the keep-ratio resize to `image_size`), the letterbox square,
    `size_divisible`, and padding with `pad_value`."""
    size = image_size_of(data_cfg.image_size)
    steps = instantiate(data_cfg.val_transforms) if data_cfg.get("val_transforms") else None
    canvas = canvas_size(size, bool(data_cfg.get("letterbox", False)))
    return val_transforms(size, steps), Collate(int(data_cfg.get("size_divisible", 32)), pad_value, canvas)


def dataset_ids(files: list[Path], root: Path, known: dict[str, int]) -> list[int]:
    """The dataset's image id of each file, matched by its path relative to `root` (the image folder),
    else by its base name when that is unambiguous; the others get ids after the largest, with a warning."""
    known = {Path(name).as_posix(): image_id for name, image_id in known.items()}  # "./a.jpg" is "a.jpg"
    by_name: dict[str, list[int]] = {}
    for name, image_id in known.items():
        by_name.setdefault(Path(name).name, []).append(image_id)
    first_new = max(known.values(), default=0) + 1
    ids, missing = [], []
    for f in files:
        rel = Path(os.path.relpath(f.resolve(), root.resolve())).as_posix()
        same_name = by_name.get(f.name, [])
        if rel in known or len(same_name) == 1:
            ids.append(known[rel] if rel in known else same_name[0])
        else:
            ids.append(first_new + len(missing))
            missing.append(rel)
    if missing:
        log.warning("%d of %d images are not in the annotation file; they get ids from %d on: %s", len(missing),
                    len(files), first_new, ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return ids
