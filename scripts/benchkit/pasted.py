"""The accuracy benchmark's second data set (scripts/bench_accuracy.py --dataset pasted): a set of ordinary size
(3,000 training and 500 val images of 256 px, 10 classes) from real pixels that can be had offline: objects
cut from the photographs the scikit-image wheel ships (skimage/data: the astronaut, Chelsea the cat, the
coffee cup, the rocket, the motorcycle, the horse, the logo, the coins, the cameraman, the retina), pasted on
real backgrounds (the wheel's grass, brick, gravel, moon, Hubble and microscopy images, and the deepforest
wheel's aerial NEON rasters). The tree tiles (benchkit/datasets.py) are small (133 training tiles): there more
steps stop helping; here a detector keeps learning for the whole 30 minutes, as on a user's set of a few
thousand images.

Each image: a background crop (random position and scale, a random tint where the texture is grey), then 1 to
6 objects, each a random crop (70-100 % of each side) of its class's photo, resized so that its longer side is
20-150 px (log-uniform) with its aspect ratio jittered by up to 25 %, flipped half of the time, its brightness,
contrast and colour jittered by up to 25 %, sometimes blurred, and pasted through a mask: the horse's own
silhouette (its dark pixels), else a rectangle, an ellipse or a rounded rectangle. Two objects' boxes may share
at most 30 % of the smaller one (else the new one is drawn again); a box is the bounding box of its mask as
pasted, clipped to the image, and an object that keeps under half of its box in the image is not pasted.
JPEG, quality 90.

Held out: the val images lie on other backgrounds (gravel, moon, the right half of the Hubble field and the
deepforest val rasters; train: grass, brick, microscopy, the left half of Hubble, the deepforest train rasters),
its motorcycle is the other photo (motorcycle_right, train: motorcycle_left), and it is drawn from another seed.

Written once, atomically and byte-for-byte reproducibly (a fixed seed, the pinned wheels' files checked by
sha256), to <cache>/pasted_objects_<n_train>/ as a COCO set (train.json, val.json, images/) and checked with
`detcli data check`, like the tiles.

Naming: n = objects in an image, H, W = image height and width.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from benchkit.datasets import SPLITS as TREE_SPLITS
from benchkit.datasets import cached_coco_set, read_wheel

WHEEL = "scikit-image==0.26.0"
SIZE = 256
COUNTS = {"train": 3000, "val": 500}
SEEDS = {"train": 0, "val": 1}
# class -> the skimage/data photo per split
CLASSES = {
    "astronaut": "astronaut.png", "cat": "chelsea.png", "cup": "coffee.png", "rocket": "rocket.jpg",
    "motorcycle": {"train": "motorcycle_left.png", "val": "motorcycle_right.png"}, "horse": "horse.png",
    "logo": "logo.png", "coins": "coins.png", "cameraman": "camera.png", "retina": "retina.jpg",
}
BACKGROUNDS = {"train": ["grass.png", "brick.png", "ihc.png", ("hubble_deep_field.jpg", "left")],
               "val": ["gravel.png", "moon.png", ("hubble_deep_field.jpg", "right")]}
# digest() of the skimage/data files used: the wheel differs per platform, its data files do not
SKIMAGE_DIGEST = "5cb16c3345df1f98ceabdb8b6680afdac5ae89e6cb25e72d751573b111960e87"
SILHOUETTES = {"horse"}  # pasted through their dark pixels (a black figure on white), not a drawn shape
MAX_OVERLAP = 0.3  # intersection over the smaller of two boxes
MIN_VISIBLE = 0.5


def fetch_skimage_data(cache: Path) -> dict[str, bytes]:
    """The skimage/data files of the scikit-image wheel, downloaded once into `cache` by pip (no dependencies)."""
    found = sorted(cache.glob("scikit_image-0.26.0-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", str(cache)]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SystemExit(f"`{' '.join(cmd)}` failed: the pasted set needs the scikit-image 0.26.0 wheel")
        found = sorted(cache.glob("scikit_image-0.26.0-*.whl"))
    names = {n for v in CLASSES.values() for n in ([v] if isinstance(v, str) else v.values())}
    names |= {b if isinstance(b, str) else b[0] for bs in BACKGROUNDS.values() for b in bs}
    with zipfile.ZipFile(found[0]) as z:
        files = {n: z.read(f"skimage/data/{n}") for n in sorted(names)}
    return files


def digest(files: dict[str, bytes]) -> str:
    """One sha256 over the files used (name and content), what the cached set is keyed by."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def open_rgba(data: bytes):
    """An image as RGBA."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    return image.convert("RGBA")


def backgrounds(files: dict[str, bytes], trees: dict[str, tuple[bytes, bytes]], split: str) -> list:
    """The split's background images (RGB): its skimage textures and photos, and the deepforest rasters."""
    from PIL import Image

    out = []
    for b in BACKGROUNDS[split]:
        name, half = (b, None) if isinstance(b, str) else b
        image = Image.open(io.BytesIO(files[name])).convert("RGB")
        if half is not None:
            w, h = image.size
            image = image.crop((0, 0, w // 2, h) if half == "left" else (w // 2, 0, w, h))
        out.append(image)
    for stem in TREE_SPLITS[split]:
        out.append(Image.open(io.BytesIO(trees[stem][0])).convert("RGB"))
    return out


def background(rng: np.random.Generator, images: list, size: int = SIZE):
    """A size x size crop of a random background at a random scale, tinted where it is grey."""
    from PIL import Image, ImageOps

    image = images[rng.integers(len(images))]
    w, h = image.size
    side = int(rng.uniform(0.3, 1.0) * min(w, h))
    x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
    crop = image.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
    grey = np.asarray(crop).std(2).mean() < 2
    if grey:  # a grey texture: mapped between two random colours
        dark, light = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
        crop = ImageOps.colorize(crop.convert("L"), dark, light)
    return crop


def object_patch(rng: np.random.Generator, photo, silhouette: bool):
    """A jittered crop of the class's photo (RGBA) and its paste mask (L), the longer side 20-150 px."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    patch = photo.crop((x, y, x + cw, y + ch))
    long_side = float(np.exp(rng.uniform(np.log(20), np.log(150))))
    aspect = (cw / ch) * rng.uniform(0.75, 1.25)
    pw, ph = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    patch = patch.resize((max(4, round(pw)), max(4, round(ph))), Image.BILINEAR)
    if rng.random() < 0.5:
        patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
    rgb = patch.convert("RGB")
    dark = rgb.convert("L").point(lambda v: 255 if v < 128 else 0)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        rgb = enhance(rgb).enhance(rng.uniform(0.75, 1.25))
    if rng.random() < 0.2:
        rgb = rgb.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    if silhouette:
        mask = dark
    else:
        mask = Image.new("L", rgb.size, 0)
        draw, box = ImageDraw.Draw(mask), (0, 0, rgb.width - 1, rgb.height - 1)
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle(box, fill=255)
        elif shape == 1:
            draw.ellipse(box, fill=255)
        else:
            draw.rounded_rectangle(box, radius=min(rgb.size) // 4, fill=255)
    return rgb, mask


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) intersection of box a (4,) with each of boxes b (n, 4), x1y1x2y2, over the smaller of the two."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])  # (n, 2), (n, 2)
    inter = np.clip(rb - lt, 0, None).prod(1)  # (n,)
    return inter / np.minimum(area(a), area(b))


def area(boxes: np.ndarray) -> np.ndarray:
    """(...,) the area of boxes (..., 4) x1y1x2y2."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def paste_objects(rng: np.random.Generator, image, photos: list, boxes: np.ndarray, labels: list,
                  patch=object_patch, inside: bool = False):
    """1 to 6 more objects cut by `patch` (object_patch's signature) pasted on `image` (RGB, square), each drawn
    again (up to 10 times) where it would cover more than MAX_OVERLAP of a box already there; `inside`: wholly
    inside the image, else up to a quarter of its side past an edge (its box clipped; under MIN_VISIBLE of it
    left in the image: drawn again). The image and its boxes (n, 4) x1y1x2y2 and labels (n,) indices into CLASSES."""
    size = image.width
    for _ in range(rng.integers(1, 7)):
        for _attempt in range(10):
            label = int(rng.integers(len(CLASSES)))
            rgb, mask = patch(rng, *photos[label])
            if inside:
                x, y = int(rng.integers(0, size - rgb.width + 1)), int(rng.integers(0, size - rgb.height + 1))
            else:
                x = int(rng.integers(-rgb.width // 4, size - 3 * rgb.width // 4 + 1))
                y = int(rng.integers(-rgb.height // 4, size - 3 * rgb.height // 4 + 1))
            bbox = mask.getbbox()
            if bbox is None:
                continue
            full = np.array([x + bbox[0], y + bbox[1], x + bbox[2], y + bbox[3]], dtype=np.float64)
            clipped = np.clip(full, 0, size)
            if area(clipped) < MIN_VISIBLE * area(full) or (len(boxes) and overlap(clipped, boxes).max() > MAX_OVERLAP):
                continue
            image.paste(rgb, (x, y), mask)
            boxes, labels = np.concatenate([boxes, clipped[None]]), [*labels, label]
            break
    return image, boxes, labels


def compose(rng: np.random.Generator, photos: list, bgs: list, size: int = SIZE, patch=object_patch):
    """One image (RGB, size x size) on a background of `bgs` and its objects (paste_objects)."""
    return paste_objects(rng, background(rng, bgs, size), photos, np.zeros((0, 4)), [], patch)


def build_split(files: dict, trees: dict, split: str, count: int, images: Path, compose=compose,
                size: int = SIZE) -> dict:
    """`count` images of the split made by `compose` (rng, photos, backgrounds -> image, boxes, labels) written as
    JPEG into `images`; the COCO instances dict."""
    rng = np.random.default_rng(SEEDS[split])
    photos = [(open_rgba(files[v if isinstance(v, str) else v[split]]), name in SILHOUETTES)
              for name, v in CLASSES.items()]
    bgs = backgrounds(files, trees, split)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}
    for image_id in range(1, count + 1):
        image, boxes, labels = compose(rng, photos, bgs)
        name = f"{split}_{image_id:05d}.jpg"
        image.save(images / name, format="JPEG", quality=90)
        coco["images"].append({"id": image_id, "file_name": name, "width": size, "height": size})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0,
            })
    return coco


def synthetic_skimage_data() -> dict[str, bytes]:
    """A stand-in for the skimage/data files (no network): each a PNG of its real size and mode, of flat
    coloured blocks; the horse and the logo with an alpha channel (a disc)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    files = {}
    names = {n for v in CLASSES.values() for n in ([v] if isinstance(v, str) else v.values())}
    names |= {b if isinstance(b, str) else b[0] for bs in BACKGROUNDS.values() for b in bs}
    for name in sorted(names):
        image = Image.new("RGBA", (160, 120), tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.integers(0, 120), rng.integers(0, 90)
            draw.rectangle((x, y, x + 40, y + 30), fill=tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,))
        if name == "horse.png":  # a dark figure on white, as the real one
            image = Image.new("RGBA", image.size, (255, 255, 255, 255))
            ImageDraw.Draw(image).ellipse((10, 10, 150, 110), fill=(0, 0, 0, 255))
        out = io.BytesIO()
        image.save(out, format="PNG")
        files[name] = out.getvalue()
    return files


def prepare_pasted(cache: Path, tree_wheel: Path, n_train: int = COUNTS["train"], n_val: int = COUNTS["val"],
                   synthetic: bool = False) -> Path:
    """The pasted set in <cache>/pasted_objects_<n_train>/, built in a temporary folder, checked by
    `detcli data check` and renamed into place; kept while the source files and the parameters are the same.
    `synthetic`: from stand-ins for the skimage files (synthetic_skimage_data), for runs without network."""
    files = synthetic_skimage_data() if synthetic else fetch_skimage_data(cache / "wheels")
    if not synthetic and SKIMAGE_DIGEST is not None and digest(files) != SKIMAGE_DIGEST:
        raise SystemExit(f"the skimage/data files of the scikit-image 0.26.0 wheel in {cache / 'wheels'} are not "
                         f"the expected ones (digest {digest(files)}, expected {SKIMAGE_DIGEST})")
    trees = read_wheel(tree_wheel)
    counts = {"train": n_train, "val": n_val}
    params = {"skimage_files": digest(files), "trees": digest({k: v[0] for k, v in trees.items()}),
              "size": SIZE, "counts": counts, "seeds": SEEDS, "classes": CLASSES, "backgrounds": BACKGROUNDS,
              "max_overlap": MAX_OVERLAP, "min_visible": MIN_VISIBLE}
    out = cache / f"pasted_objects_{'synthetic_' if synthetic else ''}{n_train}"
    return cached_coco_set(out, params, counts,
                           lambda split, images: build_split(files, trees, split, counts[split], images),
                           f"composing the pasted-objects set into {out}")
