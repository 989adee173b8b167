"""`detcli data check` finds every kind of defect with its file; `data.on_bad=skip` trains on the rest;
input files are never written; `detcli data show` draws boxes where the objects are."""

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
from conftest import detcli
from PIL import Image


def png(path: Path, size=(64, 64), value=128) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def checksums(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def defective_coco(root: Path) -> Path:
    """Good images 0 and 6-9, and one of every defect a COCO dataset can have."""
    for i in [0, 2, 4, 6, 7, 8, 9]:
        png(root / f"im{i}.png")
    (root / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "im3.jpg").write_bytes(buf.getvalue()[:-200])  # truncated
    images = [{"id": i, "file_name": f"im{i}.png", "width": 64, "height": 64} for i in [0, 1, 2, 6, 7, 8, 9]]
    images += [{"id": 3, "file_name": "im3.jpg", "width": 64, "height": 64},
               {"id": 4, "file_name": "im4.png", "width": 80, "height": 80},  # size differs from the file
               {"id": 0, "file_name": "im0.png", "width": 64, "height": 64}]  # duplicate image id
    good = [{"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 30], "area": 900, "iscrowd": 0}
            for i in [6, 7, 8, 9]]
    bad = [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [50, 10, 40, 20], "area": 800},  # out of the image
        {"id": 2, "image_id": 0, "category_id": 1, "bbox": [10, 10, 0, 20], "area": 0},  # zero width
        {"id": 3, "image_id": 0, "category_id": 1, "bbox": [math.nan, 10, 5, 5], "area": 25},  # NaN
        {"id": 4, "image_id": 0, "category_id": 99, "bbox": [5, 5, 10, 10], "area": 100},  # unknown category
        {"id": 4, "image_id": 0, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100},  # duplicate ann id
        {"id": 5, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25},  # points at no image
    ]
    ann = {"images": images, "annotations": good + bad, "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(ann))
    return root / "ann.json"


def test_data_check_reports_every_defect_and_skip_trains(tmp_path, cache_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ann = defective_coco(data_dir)
    before = checksums(data_dir)
    args = ["data=coco", f"data.train_ann={ann}", f"data.train_images={data_dir}", f"data.val_ann={ann}",
            f"data.val_images={data_dir}", "data.image_size=64", "data.batch_size=2", "data.num_workers=0"]
    proc = detcli("data", "check", *args, f"hydra.run.dir={tmp_path}/check", check=False)
    assert proc.returncode == 1
    report = json.loads((tmp_path / "check" / "data_check.json").read_text())
    problems = [(Path(d["file"]).name, d["where"], d["problem"]) for d in report["defects"] if d["split"] == "train"]
    text = "\n".join(" | ".join(p) for p in problems)
    for expected in [
        ("im1.png", "image file is missing"), ("im2.png", "cannot be read"), ("im3.jpg", "truncated"),
        ("im4.png", "but its annotation says 80x80"), ("annotation id 1", "leaves the 64x64 image"),
        ("annotation id 2", "zero or negative size"), ("annotation id 3", "NaN"),
        ("annotation id 4", "unknown category_id 99"), ("annotation id 4", "duplicate annotation id"),
        ("image id 0", "duplicate image id"), ("annotation id 5", "points at image_id 999"),
    ]:
        assert any(expected[0] in " ".join(p) and expected[1] in p[2] for p in problems), (expected, text)
    assert all(p[0] in ("ann.json",) or p[0].startswith("im") for p in problems)  # every one names its file
    assert "im1.png" in proc.stdout and "annotation id 3" in proc.stdout

    refused = detcli("train", *args, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/refused", check=False)
    assert refused.returncode == 1 and "data.on_bad=skip" in refused.stderr and "im1.png" in refused.stderr
    detcli("train", *args, "data.on_bad=skip", "backbone=resnet10t", "neck.out_channels=32", "head.num_convs=1",
           "head.norm_groups=8", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/skip")
    assert (tmp_path / "skip" / "checkpoints" / "last.pt").is_file()
    assert checksums(data_dir) == before  # the user's files were only read


def test_data_check_names_yolo_lines(tmp_path, cache_dir):
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(2):
        png(root / "images" / "train" / f"a{i}.png")
    (root / "labels" / "train" / "a0.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n")
    (root / "labels" / "train" / "a1.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [thing]\n")
    proc = detcli("data", "check", "data=yolo", f"data.yaml_file={root}/data.yaml", f"hydra.run.dir={tmp_path}/c",
                  check=False)
    assert proc.returncode == 1
    assert "a0.txt: line 2: expected 'class cx cy w h' (5 fields), got 4" in proc.stdout.replace("\n", "")
    assert "a1.txt: line 1: class index 7 is outside names" in proc.stdout.replace("\n", "")


def test_data_show_draws_boxes_on_the_objects(tmp_path, cache_dir):
    png(tmp_path / "one.png", value=128)
    ann = {"images": [{"id": 1, "file_name": "one.png", "width": 64, "height": 64}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 12, 30, 20], "area": 600}],
           "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    out = tmp_path / "show.png"
    proc = detcli("data", "show", "data=coco", f"data.val_ann={tmp_path}/ann.json", f"data.val_images={tmp_path}",
                  "data.image_size=64", "split=val", "n=1", f"output={out}", f"hydra.run.dir={tmp_path}/run")
    assert str(out) in proc.stdout
    grid = np.array(Image.open(out).convert("RGB")).astype(int)
    red = np.array([0xE6, 0x19, 0x4B])  # the first class's colour (a grid of one image has no border)
    for y, x in [(12, 25), (32, 25), (22, 10), (22, 40)]:  # a pixel on each side of x 10..40, y 12..32
        assert np.abs(grid[y, x] - red).max() <= 2, (y, x, grid[y, x])
    assert np.abs(grid[22, 25] - 128).max() <= 2  # inside the box: the image itself
