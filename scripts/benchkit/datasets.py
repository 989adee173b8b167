"""The accuracy benchmark's data set (scripts/bench_accuracy.py): the deepforest 2.1.0 wheel, downloaded
once by pip (or a generated stand-in for it), its four annotated NEON images cut into square tiles held out
by image, written as a COCO set atomically and byte-for-byte reproducibly into the cache and checked with
`detcli data check`; the tiles read back as tensors, and the YOLO-format view ultralytics trains on.

Naming: n = boxes of an image, k = boxes kept in a tile, H, W = image height and width.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from benchkit.common import ROOT

WHEEL = "deepforest==2.1.0"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"  # of its py3-none-any wheel
MEMBERS = "deepforest/data/"
SPLITS = {  # held out by image (see the docstring)
    "train": ["2019_YELL_2_528000_4978000_image_crop2", "OSBS_029"],
    "val": ["2019_YELL_2_541000_4977000_image_crop", "SOAP_061"],
}
MIN_VISIBLE = 0.5  # a box cut by a tile edge must keep this fraction of its area (else dropped / iscrowd)
NEGATIVES = 0.1  # tiles without a tree kept, at most this fraction of the tiles with trees


def fetch_wheel(cache: Path) -> Path:
    """The deepforest wheel, downloaded once into `cache` by pip (no dependencies)."""
    found = sorted(cache.glob("deepforest-2.1.0-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SystemExit(f"`{' '.join(cmd)}` failed: give the wheel with --wheel PATH")
        found = sorted(cache.glob("deepforest-2.1.0-*.whl"))
    return found[0]


def read_wheel(wheel: Path) -> dict[str, tuple[bytes, bytes]]:
    """(PNG, Pascal VOC XML) of each image the splits name, read from the wheel; nothing else is unpacked."""
    stems = [stem for split in SPLITS.values() for stem in split]
    with zipfile.ZipFile(wheel) as z:
        wanted = {f"{MEMBERS}{s}{ext}" for s in stems for ext in (".png", ".xml")}
        missing = sorted(wanted - set(z.namelist()))
        if missing:
            raise SystemExit(f"'{wheel}' lacks {missing}: not the deepforest 2.1.0 wheel?")
        return {s: (z.read(f"{MEMBERS}{s}.png"), z.read(f"{MEMBERS}{s}.xml")) for s in stems}


def voc_boxes(xml: bytes) -> np.ndarray:
    """(n, 4) x1y1x2y2 of every object: all are trees (SOAP's Alive / Dead included)."""
    import xml.etree.ElementTree as ET

    objects = ET.fromstring(xml).iter("object")
    boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
             for o in objects]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts that cover [0, length), evenly spread, the last one flush with the end."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def cut_tiles(image, boxes: np.ndarray, tile: int, stride: int, crowd: bool):
    """Yields (name suffix, crop, boxes (k, 4) in tile pixels, iscrowd (k,)) per tile, in scan order."""
    W, H = image.size
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (n,)
    for y in tile_origins(H, tile, stride):
        for x in tile_origins(W, tile, stride):
            w, h = min(tile, W), min(tile, H)
            clipped = np.clip(boxes - [x, y, x, y], 0, [w, h, w, h])  # (n, 4)
            cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]  # (n,)
            inside = (cw >= 1) & (ch >= 1)
            whole = inside & (cw * ch >= MIN_VISIBLE * area)
            part = inside & ~whole & crowd  # val: ignored by the metric rather than dropped
            keep = whole | part
            yield f"_x{x:04d}_y{y:04d}", image.crop((x, y, x + w, y + h)), clipped[keep], part[keep]


def few_negatives(tiles: list[tuple]) -> list[tuple]:
    """The tiles with trees, and evenly spaced tiles without one up to NEGATIVES of their number."""
    empty = [t for t in tiles if not (~t[3]).any()]
    allowed = int(NEGATIVES * (len(tiles) - len(empty)))
    kept = {id(t) for t in empty[:: max(1, math.ceil(len(empty) / allowed))][:allowed]} if allowed else set()
    return [t for t in tiles if (~t[3]).any() or id(t) in kept]


def build_split(sources: dict, split: str, tile: int, images: Path) -> dict:
    """Tiles of the split's images written as PNG into `images`; the COCO instances dict."""
    from PIL import Image

    stride = tile // 2 if split == "train" else tile  # train: more positions; val: each tree scored ~once
    tiles = []
    for stem in SPLITS[split]:
        png, xml = sources[stem]
        image = Image.open(io.BytesIO(png)).convert("RGB")
        cuts = cut_tiles(image, voc_boxes(xml), tile, stride, crowd=split == "val")
        tiles += [(stem + suffix, *rest) for suffix, *rest in cuts]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tree"}]}
    for image_id, (name, crop, boxes, crowd) in enumerate(few_negatives(tiles), 1):
        crop.save(images / f"{name}.png", format="PNG")
        coco["images"].append({"id": image_id, "file_name": f"{name}.png", "width": crop.width,
                               "height": crop.height})
        for (x1, y1, x2, y2), c in zip(boxes.tolist(), crowd.tolist()):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": int(c),
            })
    return coco


def prepare_dataset(wheel: Path, sha256: str, out: Path, tile: int) -> Path:
    """The tiled COCO set in `out` (train.json, val.json, images/), kept while the wheel and the parameters
    are the same (cached_coco_set)."""
    params = {"wheel": wheel.name, "sha256": sha256, "tile": tile, "splits": SPLITS, "min_visible": MIN_VISIBLE,
              "negatives": NEGATIVES}
    sources = functools.cache(lambda: read_wheel(wheel))  # read only when the set is built
    return cached_coco_set(out, params, SPLITS, lambda split, images: build_split(sources(), split, tile, images),
                           f"tiling {wheel.name} into {out}")


def cached_coco_set(out: Path, params: dict, splits, build, message: str) -> Path:
    """A benchmark's COCO set in `out` (<split>.json and images/ per split of `splits`, `build(split, images)`
    writing a split's images and returning its instances dict), made once: built in a temporary folder,
    checked by `detcli data check` and renamed into place; kept while source.json holds the same `params`."""
    params = json.loads(json.dumps(params))
    if (out / "source.json").is_file() and json.loads((out / "source.json").read_text()) == params:
        return out
    print(message)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for split in splits:
        coco = build(split, tmp / "images")
        (tmp / f"{split}.json").write_text(json.dumps(coco) + "\n")
    check_dataset(tmp)
    (tmp / "source.json").write_text(json.dumps(params, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def data_overrides(data: Path) -> list[str]:
    return ["data=coco", f"data.train_ann={data / 'train.json'}", f"data.train_images={data / 'images'}",
            f"data.val_ann={data / 'val.json'}", f"data.val_images={data / 'images'}"]


def check_dataset(data: Path) -> None:
    """`detcli data check` on the set (exit 1 when it finds a defect)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "detcli", "data", "check", *data_overrides(data),
                               f"hydra.run.dir={tmp}"], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"detcli data check failed on {data}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def dataset_stats(data: Path) -> dict:
    out = {}
    for split in SPLITS:
        coco = json.loads((data / f"{split}.json").read_text())
        crowd = sum(a["iscrowd"] for a in coco["annotations"])
        with_trees = {a["image_id"] for a in coco["annotations"] if not a["iscrowd"]}
        out[split] = {"tiles": len(coco["images"]), "negative_tiles": len(coco["images"]) - len(with_trees),
                      "boxes": len(coco["annotations"]) - crowd, "crowd_boxes": crowd}
    return out


def synthetic_wheel(path: Path, tile: int) -> Path:
    """A stand-in for the deepforest wheel with the same member names (no network): green crowns on
    brown ground, about 12 per tile, the images shaped like the real ones but smaller."""
    from PIL import Image, ImageDraw

    shapes = {SPLITS["train"][0]: (1.6, 1.7), SPLITS["train"][1]: (1.0, 1.0),  # (width, height) in tiles
              SPLITS["val"][0]: (1.25, 1.05), SPLITS["val"][1]: (1.0, 1.0)}
    rng = np.random.default_rng(0)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w") as z:
        for stem, (fw, fh) in shapes.items():
            W, H, n = round(fw * tile), round(fh * tile), round(12 * fw * fh)
            wh = rng.uniform(0.06, 0.12, (n, 2)) * tile  # (n, 2)
            xy = rng.uniform(0, 1, (n, 2)) * ([W, H] - wh)  # (n, 2)
            boxes = np.concatenate([xy, xy + wh], 1).round()  # (n, 4)
            image = Image.new("RGB", (W, H), (110, 90, 60))
            draw = ImageDraw.Draw(image)
            for b in boxes.tolist():
                draw.ellipse(b, fill=(40, 110, 40))
            png = io.BytesIO()
            image.save(png, format="PNG")
            objects = "".join(f"<object><name>Tree</name><bndbox><xmin>{x1:.0f}</xmin><ymin>{y1:.0f}</ymin>"
                              f"<xmax>{x2:.0f}</xmax><ymax>{y2:.0f}</ymax></bndbox></object>"
                              for x1, y1, x2, y2 in boxes)
            xml = f"<annotation><size><width>{W}</width><height>{H}</height></size>{objects}</annotation>"
            for name, content in ((f"{stem}.png", png.getvalue()), (f"{stem}.xml", xml.encode())):
                z.writestr(zipfile.ZipInfo(MEMBERS + name, (2020, 1, 1, 0, 0, 0)), content)
    tmp.replace(path)
    return path


def tree_wheel(args, cache: Path) -> tuple[Path, str]:
    """The deepforest wheel (given, or downloaded once, and checked) or the synthetic one; its sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        wheel = synthetic_wheel(cache / "deepforest-synthetic.whl", args.tile)
    else:
        wheel = args.wheel or fetch_wheel(cache / "wheels")
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if not args.synthetic and sha256 != WHEEL_SHA256:
        raise SystemExit(f"'{wheel}' has sha256 {sha256}, not deepforest 2.1.0's ({WHEEL_SHA256})")
    return wheel.resolve(), sha256


def dataset(args, cache: Path) -> Path:
    """The tiled set of the real wheel (given, or downloaded once and checked), or of the synthetic one."""
    wheel, sha256 = tree_wheel(args, cache)
    name = f"deepforest_trees_{'synthetic_' if args.synthetic else ''}{args.tile}"
    return prepare_dataset(wheel, sha256, cache / name, args.tile)


def read_split(data: Path, split: str) -> list[dict]:
    """Per tile: the image uint8 (3, H, W) and its gt as detcli's evaluator receives it (original
    pixels, contiguous labels, iscrowd, area)."""
    from torchvision.io import ImageReadMode, decode_image

    coco = json.loads((data / f"{split}.json").read_text())
    label = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = []
    for img in coco["images"]:
        a = anns.get(img["id"], [])
        xywh = torch.tensor([x["bbox"] for x in a], dtype=torch.float32).reshape(-1, 4)  # (n, 4)
        gt = {"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),  # (n, 4) x1y1x2y2
              "labels": torch.tensor([label[x["category_id"]] for x in a], dtype=torch.long),  # (n,)
              "iscrowd": torch.tensor([x["iscrowd"] for x in a], dtype=torch.long),  # (n,)
              "area": torch.tensor([x["area"] for x in a], dtype=torch.float32)}  # (n,)
        image = decode_image(str(data / "images" / img["file_name"]), mode=ImageReadMode.RGB)
        out.append({"image": image, "gt": gt})
    return out


def yolo_view(data: Path, out: Path) -> Path:
    """A YOLO-format view of the COCO set for ultralytics, in `out`: images/<split>/ hard links to the
    tiles (copies where a link is impossible), labels/<split>/<stem>.txt (class cx cy w h, normalised;
    crowd boxes left out, as ultralytics has no crowd), data.yaml. Built in a temporary folder and
    renamed into place; kept while the COCO set's source.json is the same. The COCO files are only read."""
    import yaml

    source = (data / "source.json").read_text()
    if (out / "source.json").is_file() and (out / "source.json").read_text() == source:
        return out
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in SPLITS:
        coco = json.loads((data / f"{split}.json").read_text())
        write_yolo_split(coco, data / "images", tmp / "images" / split, tmp / "labels" / split)
    names = {i: c["name"] for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    spec = {"path": str(out.resolve()), "train": "images/train", "val": "images/val", "names": names}
    (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp / "source.json").write_text(source)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def write_yolo_split(coco: dict, images: Path, image_dir: Path, label_dir: Path) -> None:
    label = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a["iscrowd"]:
            anns.setdefault(a["image_id"], []).append(a)
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for img in coco["images"]:
        name, W, H = Path(img["file_name"]).name, img["width"], img["height"]
        try:
            os.link(images / img["file_name"], image_dir / name)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(images / img["file_name"], image_dir / name)
        lines = [f"{label[a['category_id']]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} "
                 f"{h / H:.6f}" for a in anns.get(img["id"], []) for x, y, w, h in [a["bbox"]]]
        (label_dir / Path(name).with_suffix(".txt")).write_text("".join(f"{line}\n" for line in lines))
