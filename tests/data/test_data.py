"""COCO loading and the toy generator."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detcli.data.coco import CocoData
from detcli.data.collate import collate
from detcli.data.toy import generate_toy
from detcli.errors import DataError


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_toy_is_deterministic_by_seed(tmp_path):
    a = generate_toy(tmp_path / "a", seed=3, num_train=6, num_val=2, canvas=64)
    b = generate_toy(tmp_path / "b", seed=3, num_train=6, num_val=2, canvas=64)
    c = generate_toy(tmp_path / "c", seed=4, num_train=6, num_val=2, canvas=64)
    assert digest(a) == digest(b) != digest(c)
    train = json.loads((a / "train.json").read_text())
    assert len(train["images"]) == 6 and {c["name"] for c in train["categories"]} == {"circle", "square", "triangle"}
    for ann in train["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64


@pytest.fixture
def coco(tmp_path):
    """Three images: two boxes of category 7 and a crowd box of 3 in the first, nothing in the second
    (a negative), a box of category 3 in the third; category ids are not contiguous."""
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    ann = {
        "images": [{"id": 10 + i, "file_name": f"im{i}.png", "width": 60, "height": 40} for i in range(3)],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [30, 5, 40, 10], "area": 300, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 1},
            {"id": 4, "image_id": 12, "category_id": 3, "bbox": [5, 5, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path), val_ann=str(tmp_path / "ann.json"),
                    val_images=str(tmp_path), image_size=60, hflip=0.0, batch_size=3, num_workers=0,
                    on_bad="clip")


def test_coco_ids_map_to_contiguous_labels(coco):
    assert coco.cat_ids == [3, 7] and coco.class_names == ["dog", "cat"] and coco.num_classes == 2
    image, target, meta = coco.dataset("train")[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    # the crowd box is left out of training; the box reaching past the border (30+40 > 60) is clipped
    assert target["labels"].tolist() == [1, 1]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[1.0, 2, 11, 22], [30, 5, 60, 15]]))
    assert meta["image_id"] == 10


def test_eval_keeps_crowd_flagged_and_negatives(coco):
    ds = coco.dataset("val")
    gt = ds[0][2]["gt"]
    assert gt["iscrowd"].tolist() == [0, 0, 1] and gt["labels"].tolist() == [1, 1, 0]
    assert len(ds) == 3 and len(ds[1][1]["labels"]) == 0  # the image without boxes stays


def test_collate_pads_images_and_boxes(coco):
    batch = collate([coco.dataset("train")[i] for i in range(3)], size_divisible=32)
    assert batch["images"].shape == (3, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["boxes"].shape == (3, 2, 4)
    assert batch["labels"].tolist() == [[1, 1], [-1, -1], [0, -1]]
    assert batch["image_sizes"].tolist() == [[40, 60]] * 3


def test_resize_keeps_the_aspect_ratio(coco):
    coco.image_size = 30  # longer side -> 30
    image, target, _ = coco.dataset("train")[0]
    assert image.shape[-2:] == (20, 30)
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor)[0], torch.tensor([0.5, 1.0, 5.5, 11.0]))


def test_corrupt_image_error_names_the_file(coco, tmp_path):
    (tmp_path / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    coco.on_bad = "error"
    with pytest.raises(DataError, match="im1.png: image cannot be read"):
        coco.dataset("train")  # found by the header check before training
    coco.check_images, coco.on_bad = False, "clip"
    with pytest.raises(DataError, match="im1.png"):
        coco.dataset("train")[1]  # and when read


def test_bad_json_error_names_file_and_line(tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    data = CocoData(train_ann=str(tmp_path / "bad.json"), train_images=str(tmp_path))
    with pytest.raises(DataError, match=r"bad.json.*line 2"):
        data.dataset("train")


def test_unknown_category_names_the_annotation(coco, tmp_path):
    ann = json.loads((tmp_path / "ann.json").read_text())
    ann["annotations"][0]["category_id"] = 99
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    data = CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path), on_bad="clip")
    with pytest.raises(DataError, match="annotation id 1: unknown category_id 99"):
        CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path)).dataset("train")
    assert data.dataset("train")[0][1]["labels"].tolist() == [1]  # left out under on_bad=clip
