"""A set of large images with small objects, for tiled training and sliced evaluation (docs/data.md "Large
images"): the pasted-objects recipe (scripts/benchkit/pasted.py: objects cut from the scikit-image photos, pasted
on real textures and the NEON rasters, val held out by background) on 768 x 768 canvases, each object at a quarter
of its pasted-set size (5-38 px on its longer side), up to 24 of them an image.

    python -m benchkit.large CACHE TREE_WHEEL [N_TRAIN N_VAL]   (from scripts/)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchkit import pasted

SIZE, SHRINK, MAX_OBJECTS = 768, 0.25, 24


def small_patch(rng: np.random.Generator, photo, silhouette: bool):
    rgb, mask = _object_patch(rng, photo, silhouette)
    side = (max(2, round(rgb.width * SHRINK)), max(2, round(rgb.height * SHRINK)))
    return rgb.resize(side), mask.resize(side)


def compose(rng: np.random.Generator, photos: dict, bgs: list):
    image, boxes, labels = _compose(rng, photos, bgs)
    for _ in range(MAX_OBJECTS // 6 - 1):  # more objects: the pasted recipe puts up to 6
        more = _compose_on(image, rng, photos, boxes, labels)
        image, boxes, labels = more
    return image, boxes, labels


def _compose_on(image, rng, photos, boxes, labels):
    for _ in range(rng.integers(1, 7)):
        for _attempt in range(10):
            label = int(rng.integers(len(pasted.CLASSES)))
            rgb, mask = small_patch(rng, *photos[label])
            x = int(rng.integers(0, SIZE - rgb.width + 1))
            y = int(rng.integers(0, SIZE - rgb.height + 1))
            bbox = mask.getbbox()
            if bbox is None:
                continue
            full = np.array([x + bbox[0], y + bbox[1], x + bbox[2], y + bbox[3]], dtype=np.float64)
            if len(boxes) and pasted.overlap(full, boxes).max() > pasted.MAX_OVERLAP:
                continue
            image.paste(rgb, (x, y), mask)
            boxes, labels = np.concatenate([boxes, full[None]]), [*labels, label]
            break
    return image, boxes, labels


_object_patch, _compose = pasted.object_patch, pasted.compose


def main(cache: Path, tree_wheel: Path, n_train: int = 400, n_val: int = 60) -> Path:
    pasted.SIZE = SIZE
    pasted.object_patch = small_patch
    pasted.compose = compose
    files = pasted.fetch_skimage_data(cache / "wheels")
    trees = pasted.read_wheel(tree_wheel)
    counts = {"train": n_train, "val": n_val}
    params = {"skimage_files": pasted.digest(files), "size": SIZE, "shrink": SHRINK, "max_objects": MAX_OBJECTS,
              "counts": counts, "seeds": pasted.SEEDS}
    out = cache / f"large_objects_{n_train}"
    return pasted.cached_coco_set(out, params, counts,
                                  lambda split, images: pasted.build_split(files, trees, split, counts[split], images),
                                  f"composing the large-image set into {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    print(main(Path(args[0]), Path(args[1]), *(int(a) for a in args[2:4])))
