"""Plain images for `detcli predict`: a file, a folder or a glob pattern."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from detcli.data.base import read_image
from detcli.data.transforms import val_transforms
from detcli.errors import DataError

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
    """(image uint8 resized, empty target, meta with file_name, image_id, orig_size) per file."""

    def __init__(self, files: list[Path], image_size):
        self.files = files
        common = Path(os.path.commonpath([str(f.resolve().parent) for f in files])) if files else Path()
        self.relative = [str(f.resolve().relative_to(common)) for f in files]  # unique names for outputs
        self.transforms = val_transforms(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = read_image(self.files[i])
        H, W = image.shape[-2:]
        resized = self.transforms(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
        meta = {"image_id": i + 1, "file_name": str(self.files[i]), "orig_size": (H, W),
                "relative": self.relative[i]}
        return resized, target, meta
