"""The toy dataset: shapes on textured backgrounds, written once as COCO json + JPEG images.

The same seed always writes the same files. Generation writes into a temporary folder and renames it
into place, so an interrupted or concurrent run never leaves a half-written dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detcli.data.coco import CocoData

CLASSES = ["circle", "square", "triangle"]
CATEGORY_IDS = [1, 2, 3]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth colour gradient with stripes and noise."""
    base = rng.uniform(40, 215, size=3)
    tilt = rng.uniform(-60, 60, size=3)
    ramp = np.linspace(-0.5, 0.5, size)
    img = base + tilt * (ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None])
    period, phase = rng.uniform(6, 20), rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[:size, :size]
    stripes = np.sin((xx * np.cos(phase) + yy * np.sin(phase)) * 2 * np.pi / period)[..., None]
    img = img + stripes * rng.uniform(5, 25) + rng.normal(0, 8, size=(size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _draw(draw: ImageDraw.ImageDraw, shape: int, box: list[float], colour: tuple) -> None:
    x1, y1, x2, y2 = box
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, list[float]]] = []
    for _ in range(rng.integers(1, 5)):
        side = float(rng.uniform(0.18, 0.5) * size)
        w, h = side * rng.uniform(0.8, 1.25), side
        x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        box = [round(x1), round(y1), round(x1 + w), round(y1 + h)]
        if any(_iou(box, b) > 0.1 for _, b in objects):
            continue
        shape = int(rng.integers(0, len(CLASSES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        _draw(draw, shape, box, colour)
        objects.append((shape, box))
    return img, objects


def _write_split(root: Path, split: str, n: int, seed: int, size: int, first_image_id: int) -> None:
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        img, objects = _image(rng, size)
        file_name = f"{split}_{i:05d}.jpg"
        img.save(root / split / file_name, quality=92)
        image_id = first_image_id + i
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for shape, (x1, y1, x2, y2) in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[shape],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    categories = [{"id": c, "name": name} for c, name in zip(CATEGORY_IDS, CLASSES)]
    (root / f"{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def generate_toy(root: str | Path, seed: int = 0, num_train: int = 512, num_val: int = 64, canvas: int = 128) -> Path:
    """Write the toy dataset at `root` unless it is already there; return `root`."""
    root = Path(root).expanduser()
    if (root / "val.json").is_file() and (root / "train.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_split(tmp, "train", num_train, seed, canvas, first_image_id=1)
        _write_split(tmp, "val", num_val, seed, canvas, first_image_id=num_train + 1)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first: keep its copy
            if not (root / "val.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class ToyData(CocoData):
    """CocoData over the generated toy dataset (generated on first use)."""

    def __init__(self, root: str, seed: int = 0, num_train: int = 512, num_val: int = 64, canvas: int = 128,
                 **coco_kwargs):
        generate_toy(root, seed, num_train, num_val, canvas)
        super().__init__(**coco_kwargs)
