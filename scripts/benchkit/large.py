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
    """pasted.object_patch's crop and mask at SHRINK of its size."""
    rgb, mask = pasted.object_patch(rng, photo, silhouette)
    side = (max(2, round(rgb.width * SHRINK)), max(2, round(rgb.height * SHRINK)))
    return rgb.resize(side), mask.resize(side)


def compose(rng: np.random.Generator, photos: list, bgs: list):
    """One image: pasted.compose's at SIZE with small objects, then more rounds of 1 to 6 objects, these wholly
    inside the image (the pasted recipe puts up to 6 in one round)."""
    image, boxes, labels = pasted.compose(rng, photos, bgs, SIZE, small_patch)
    for _ in range(MAX_OBJECTS // 6 - 1):
        image, boxes, labels = pasted.paste_objects(rng, image, photos, boxes, labels, small_patch, inside=True)
    return image, boxes, labels


def main(cache: Path, tree_wheel: Path, n_train: int = 400, n_val: int = 60) -> Path:
    files = pasted.fetch_skimage_data(cache / "wheels")
    trees = pasted.read_wheel(tree_wheel)
    counts = {"train": n_train, "val": n_val}
    params = {"skimage_files": pasted.digest(files), "size": SIZE, "shrink": SHRINK, "max_objects": MAX_OBJECTS,
              "counts": counts, "seeds": pasted.SEEDS}
    out = cache / f"large_objects_{n_train}"
    return pasted.cached_coco_set(out, params, counts,
                                  lambda split, images: pasted.build_split(files, trees, split, counts[split], images,
                                                                          compose, SIZE),
                                  f"composing the large-image set into {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    print(main(Path(args[0]), Path(args[1]), *(int(a) for a in args[2:4])))
