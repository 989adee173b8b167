"""Duplicates and leakage (detcli/data/duplicates.py, `detcli data check`): planted copies across the splits are
found (an exact one, a JPEG re-encode), so are a box labelled twice and a val class the train split lacks;
`data.on_bad=skip` leaves the train side of a leaked pair out; hashes are cached."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import detcli
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from detcli.data.base import ImageRecord
from detcli.data.duplicates import Settings, close_pairs, duplicate_boxes, hash_files


def test_close_pairs_counts_differing_bits():
    bits = np.array([[0b0000], [0b0111], [0b0001], [0b1111_0000]], dtype=np.uint64)  # (N=4, W=1)
    assert close_pairs(bits, 1) == [(0, 2, 1)]
    assert close_pairs(bits, 3, words=2) == [(0, 1, 3), (0, 2, 1), (1, 2, 2)]  # chunked: the same pairs


def test_duplicate_boxes_are_same_class_pairs_above_the_iou():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.2], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    rec = ImageRecord(1, "a.png", 40, 40, boxes, np.array([0, 0, 1, 0]), np.zeros(4, bool))
    assert duplicate_boxes([rec], ["cat", "dog"]) == [{"file": "a.png", "boxes": [0, 1], "class": "cat", "iou": 0.9804}]


def planted_coco(toy: Path, root: Path) -> tuple[Path, Path]:
    """8 toy train images and 4 toy val images as a COCO set, with val_dup.png (train image 0's bytes under another
    name), val_jpeg.jpg (train image 1 re-encoded at quality 60), train image 2's first box labelled twice, and a
    val box of a class no train box has."""
    train_json, val_json = json.loads((toy / "train.json").read_text()), json.loads((toy / "val.json").read_text())
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    train_imgs, val_imgs = train_json["images"][:8], val_json["images"][:4]
    for im in train_imgs:
        shutil.copy(toy / "train" / im["file_name"], root / "train" / im["file_name"])
    for im in val_imgs:
        shutil.copy(toy / "val" / im["file_name"], root / "val" / im["file_name"])
    shutil.copy(toy / "train" / train_imgs[0]["file_name"], root / "val" / "val_dup.jpg")
    Image.open(toy / "train" / train_imgs[1]["file_name"]).convert("RGB").save(root / "val" / "val_jpeg.jpg", quality=60)
    extra = [{**train_imgs[0], "id": 9000, "file_name": "val_dup.jpg"}, {**train_imgs[1], "id": 9001, "file_name": "val_jpeg.jpg"}]
    ids = {im["id"] for im in train_imgs}
    anns = [a for a in train_json["annotations"] if a["image_id"] in ids]
    cats = train_json["categories"]
    last = cats[-1]["id"]
    anns = [a for a in anns if a["category_id"] != last]  # train has no box of the last class
    first = next(a for a in anns if a["image_id"] == train_imgs[2]["id"])
    anns.append({**first, "id": 99999})
    val_ids = {im["id"] for im in val_imgs}
    val_anns = [a for a in val_json["annotations"] if a["image_id"] in val_ids]
    val_anns.append({**val_anns[0], "id": 99998, "category_id": last})
    (root / "train.json").write_text(json.dumps({**train_json, "images": train_imgs, "annotations": anns}))
    (root / "val.json").write_text(json.dumps({**val_json, "images": val_imgs + extra, "annotations": val_anns}))
    return root / "train.json", root / "val.json"


def coco_args(root: Path) -> list[str]:
    return ["data=coco", f"data.train_ann={root / 'train.json'}", f"data.train_images={root / 'train'}",
            f"data.val_ann={root / 'val.json'}", f"data.val_images={root / 'val'}", "data.image_size=128"]


@pytest.fixture
def planted(tmp_path, cache_dir):
    from detcli.data.toy import generate_toy

    toy = cache_dir / "toy_v2_seed0_n512_128"
    generate_toy(str(toy), 0, 512, 64, 128)  # the default toy set (kept when it is there)
    planted_coco(toy, tmp_path / "set")
    return tmp_path / "set"


def test_data_check_finds_the_planted_duplicates(planted, tmp_path):
    proc = detcli("data", "check", *coco_args(planted), "scale_fit.enabled=false", f"hydra.run.dir={tmp_path / 'run'}",
                  check=False)
    assert proc.returncode == 1  # leakage fails the check
    report = json.loads((tmp_path / "run" / "data_check.json").read_text())["duplicates"]
    cross = {(Path(p["a"]["file"]).name, Path(p["b"]["file"]).name): p["kind"] for p in report["pairs"]
             if p["splits"] == "train-val"}
    train = json.loads((planted / "train.json").read_text())["images"]
    assert cross == {(train[0]["file_name"], "val_dup.jpg"): "exact", (train[1]["file_name"], "val_jpeg.jpg"): "near"}
    assert report["counts"] == {"train-val": 2}
    assert [(b["split"], b["file"], b["iou"]) for b in report["duplicate_boxes"]] == [("train", train[2]["file_name"], 1.0)]
    assert report["val_classes_missing_from_train"] == ["triangle"]
    assert (tmp_path / "run" / "duplicates.png").is_file()
    assert "across train-val (leakage)" in proc.stdout


def test_on_bad_skip_leaves_out_the_train_side_of_a_leak(planted, tmp_path, caplog):
    cfg = OmegaConf.create({"_target_": "detcli.data.coco.CocoData", "train_ann": str(planted / "train.json"),
                            "train_images": str(planted / "train"), "val_ann": str(planted / "val.json"),
                            "val_images": str(planted / "val"), "image_size": 128, "on_bad": "skip",
                            "num_workers": 0, "duplicates": {"cache": str(tmp_path / "hashes")}})
    data = instantiate(cfg)
    train = data.dataset("train")
    names = {r.file_name for r in train.records}
    first, second = (im["file_name"] for im in json.loads((planted / "train.json").read_text())["images"][:2])
    assert len(names) == 6 and first not in names and second not in names
    assert "left out 2 train images that duplicate a val image" in caplog.text
    assert len(data.dataset("val").records) == 6  # never the val side


def test_hashes_are_cached_by_file(planted, tmp_path):
    files = sorted((planted / "train").glob("*"))
    first = hash_files(files, Settings(), tmp_path / "hashes")
    again = hash_files(files, Settings(), tmp_path / "hashes")
    assert first.read == len(files) and again.read == 0 and np.array_equal(first.bits, again.bits)


def test_unreadable_files_pair_with_nothing(tmp_path):
    from detcli.data.duplicates import find_duplicates

    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"not an image")
    found = find_duplicates({"train": sorted(tmp_path.glob("*.png"))}, Settings())
    assert found["pairs"] == [] and found["images"] == 3


def test_the_multi_index_search_finds_what_comparing_every_pair_finds():
    """Random 256-bit hashes with 40 planted near copies (0-20 bits flipped): the candidates of the pigeonhole
    blocks hold every pair within the distance that the brute-force comparison finds."""
    from detcli.data.duplicates import _candidates, _popcount

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63, (3000, 4), dtype=np.int64).astype(np.uint64)
    copies = []
    for _ in range(40):
        row = bits[rng.integers(0, 3000)].copy()
        for f in rng.choice(256, rng.integers(0, 21), replace=False):
            row[f // 64] ^= np.uint64(1) << np.uint64(f % 64)
        copies.append(row)
    bits = np.vstack([bits, np.array(copies)])
    brute = close_pairs(bits, 20)  # 3040 hashes: every pair compared
    i, j = _candidates(bits, 20)
    dist = _popcount(bits[i] ^ bits[j]).sum(-1)
    indexed = sorted((int(a), int(b), int(d)) for a, b, d in zip(i, j, dist) if d <= 20)
    assert len(brute) >= 40 and sorted(brute) == indexed
