"""The same dataset written as COCO, Pascal VOC (both layouts) and YOLO gives identical targets, and
trains through the CLI in each format."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import detcli

from detcli.data.coco import CocoData
from detcli.data.toy import generate_toy
from detcli.data.voc import VocData
from detcli.data.yolo import YoloData, label_path
from detcli.errors import DataError

NAMES = ["circle", "square", "triangle"]


def write_voc(coco: dict, images: Path, out: Path, flat: bool, split_of: dict) -> None:
    ann_dir, img_dir = (out, out) if flat else (out / "Annotations", out / "JPEGImages")
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for img in coco["images"]:
        shutil.copy(images / img["file_name"], img_dir / img["file_name"])
        objs = "".join(
            f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{a['bbox'][0] + 1}</xmin><ymin>{a['bbox'][1] + 1}</ymin>"
            f"<xmax>{a['bbox'][0] + a['bbox'][2]}</xmax><ymax>{a['bbox'][1] + a['bbox'][3]}</ymax></bndbox></object>"
            for a in coco["annotations"] if a["image_id"] == img["id"])
        stem = Path(img["file_name"]).stem
        (ann_dir / f"{stem}.xml").write_text(
            f"<annotation><filename>{img['file_name']}</filename><size><width>{img['width']}</width>"
            f"<height>{img['height']}</height><depth>3</depth></size>{objs}</annotation>")
    if not flat:
        (out / "ImageSets" / "Main").mkdir(parents=True)
        for split in ("train", "val"):
            stems = [Path(i["file_name"]).stem for i in coco["images"] if split_of[i["id"]] == split]
            (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")


def write_yolo(coco: dict, images: Path, out: Path, split_of: dict) -> Path:
    cat_index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    for img in coco["images"]:
        split = split_of[img["id"]]
        dst = out / "images" / split / img["file_name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(images / img["file_name"], dst)
        lines = []
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                x, y, w, h = a["bbox"]
                W, H = img["width"], img["height"]
                lines.append(f"{cat_index[a['category_id']]} {(x + w / 2) / W:.8f} {(y + h / 2) / H:.8f} "
                             f"{w / W:.8f} {h / H:.8f}")
        label = label_path(dst)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
    (out / "data.yaml").write_text(f"path: {out}\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")
    return out / "data.yaml"


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """One dataset (toy images; train = first 12, val = last 4) in every format."""
    root = tmp_path_factory.mktemp("formats")
    toy = generate_toy(root / "toy", seed=5, num_train=16, num_val=2, canvas=64)
    coco = json.loads((toy / "train.json").read_text())
    split_of = {img["id"]: "train" if i < 12 else "val" for i, img in enumerate(coco["images"])}
    for split in ("train", "val"):
        ids = {k for k, v in split_of.items() if v == split}
        part = {**coco, "images": [i for i in coco["images"] if i["id"] in ids],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
        (root / f"coco_{split}.json").write_text(json.dumps(part))
    write_voc(coco, toy / "train", root / "voc", flat=False, split_of=split_of)
    write_voc(coco, toy / "train", root / "flat", flat=True, split_of=split_of)
    yolo_yaml = write_yolo(coco, toy / "train", root / "yolo", split_of)
    common = {"image_size": 64, "hflip": 0.0, "batch_size": 4, "num_workers": 0}
    return {
        "root": root, "yolo_yaml": yolo_yaml,
        "coco": CocoData(train_ann=str(root / "coco_train.json"), train_images=str(toy / "train"),
                         val_ann=str(root / "coco_val.json"), val_images=str(toy / "train"), **common),
        "voc": VocData(root=str(root / "voc"), **common),
        "yolo": YoloData(yaml_file=str(yolo_yaml), **common),
    }


def targets(data, split: str):
    ds = data.dataset(split)
    return [(t["boxes"].as_subclass(torch.Tensor), t["labels"]) for _, t, _ in (ds[i] for i in range(len(ds)))]


@pytest.mark.parametrize("fmt", ["voc", "yolo"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_formats_give_identical_targets(formats, fmt, split):
    assert formats[fmt].class_names == NAMES
    ref, got = targets(formats["coco"], split), targets(formats[fmt], split)
    assert len(ref) == len(got) == (12 if split == "train" else 4)
    for (rb, rl), (gb, gl) in zip(ref, got):
        assert torch.equal(rl, gl)
        torch.testing.assert_close(gb, rb, atol=1e-3, rtol=0)


def test_flat_voc_folder_reads_every_pair(formats):
    flat = VocData(root=str(formats["root"] / "flat"), image_size=64, num_workers=0)
    assert flat.class_names == NAMES and len(flat.dataset("train")) == 16


def test_voc_difficult_is_ignored_in_training_and_flagged_in_eval(formats, tmp_path):
    src = formats["root"] / "voc"
    shutil.copytree(src, tmp_path / "voc")
    xml = tmp_path / "voc" / "Annotations" / "train_00000.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    data = VocData(root=str(tmp_path / "voc"), image_size=64, hflip=0.0, num_workers=0)
    n = len(targets(formats["voc"], "train")[0][1])
    assert len(data.dataset("train")[0][1]["labels"]) == n - 1
    val = VocData(root=str(tmp_path / "voc"), val_list=str(tmp_path / "voc/ImageSets/Main/train.txt"),
                  image_size=64, num_workers=0).dataset("val")
    assert val[0][2]["gt"]["iscrowd"].tolist()[0] == 1


def test_yolo_bad_line_names_file_and_line(formats, tmp_path):
    shutil.copytree(formats["root"] / "yolo", tmp_path / "yolo")
    label = next((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.5 0.5 0.2\n")
    yaml_file = tmp_path / "yolo" / "data.yaml"
    yaml_file.write_text(yaml_file.read_text().replace(str(formats["root"] / "yolo"), str(tmp_path / "yolo")))
    with pytest.raises(Exception, match=rf"{label.name}: line 1: expected 'class cx cy w h'"):
        YoloData(yaml_file=str(yaml_file), num_workers=0).dataset("train")


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_each_format_trains_through_the_cli(formats, fmt, tmp_path, cache_dir):
    root = formats["root"]
    data = {
        "coco": ["data=coco", f"data.train_ann={root}/coco_train.json", f"data.train_images={root}/toy/train",
                 f"data.val_ann={root}/coco_val.json", f"data.val_images={root}/toy/train"],
        "voc": ["data=voc", f"data.root={root}/voc"],
        "yolo": ["data=yolo", f"data.yaml_file={formats['yolo_yaml']}"],
    }[fmt]
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    detcli("train", "backbone=resnet10t", "neck.out_channels=32", "head.num_convs=1", "head.norm_groups=8", *data,
           "data.image_size=64", "data.batch_size=4", "data.num_workers=0", "trainer.max_steps=2",
           f"hydra.run.dir={tmp_path}/run")
    evals = [json.loads(x) for x in (tmp_path / "run" / "eval_log.jsonl").read_text().splitlines()]
    assert "map_50" in evals[-1] and np.isfinite(evals[-1]["map"])
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # inputs never written


def voc_copy(formats, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(formats["root"] / "voc", root)
    return root


def drop_class(root: Path, name: str, split: str) -> None:
    for stem in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        xml = root / "Annotations" / f"{stem}.xml"
        xml.write_text(re.sub(rf"<object><name>{name}</name>.*?</object>", "", xml.read_text()))


def val_labels(data, cat_ids=None, class_names=None) -> list[list[int]]:
    ds = data.dataset("val", cat_ids, class_names)
    return [ds[i][2]["gt"]["labels"].tolist() for i in range(len(ds))]


def test_voc_labels_follow_the_checkpoint_by_name(formats, tmp_path):
    """Without circles in its files, a VOC set sorts its names to [square, triangle] (ids 1, 2); a
    checkpoint's [circle, square, triangle] still gives square label 1 and triangle label 2."""
    root = voc_copy(formats, tmp_path, "voc")
    drop_class(root, "circle", "val")
    main = root / "ImageSets" / "Main"
    (main / "train.txt").write_text((main / "val.txt").read_text())
    data = VocData(root=str(root), image_size=64, hflip=0.0, num_workers=0)
    assert data.class_names == ["square", "triangle"]
    expected = [[NAMES.index(n) for n in re.findall(r"<name>(\w+)</name>", (root / "Annotations" / f"{s}.xml")
                                                        .read_text())] for s in (main / "val.txt").read_text().split()]
    assert val_labels(data, [1, 2, 3], NAMES) == expected
    assert val_labels(data) != expected  # its own order is shifted


def test_yolo_labels_follow_the_checkpoint_by_name(formats, tmp_path):
    root = tmp_path / "yolo"
    shutil.copytree(formats["root"] / "yolo", root)
    for label in (root / "labels").rglob("*.txt"):  # the same boxes, classes listed in reverse
        lines = [line.split(" ", 1) for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(f"{2 - int(c)} {rest}\n" for c, rest in lines))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {NAMES[::-1]}\n")
    data = YoloData(yaml_file=str(root / "data.yaml"), image_size=64, hflip=0.0, num_workers=0)
    assert val_labels(data, [0, 1, 2], NAMES) == val_labels(formats["yolo"])


def test_a_class_the_checkpoint_does_not_know_is_refused(formats, tmp_path):
    root = voc_copy(formats, tmp_path, "voc")
    xml = next((root / "Annotations").glob("*.xml"))
    xml.write_text(re.sub(r"<name>\w+</name>", "<name>hexagon</name>", xml.read_text(), count=1))
    data = VocData(root=str(root), image_size=64, num_workers=0)
    with pytest.raises(DataError, match="hexagon") as e:
        data.dataset("val", [1, 2, 3], NAMES)
    assert str(NAMES) in str(e.value) and str(sorted([*NAMES, "hexagon"])) in str(e.value)


def test_eval_maps_voc_classes_by_name(formats, tmp_path, trained_run):
    """The toy checkpoint knows circle, square, triangle: a VOC val set evaluates the same whether or not
    the data's sorted names include circle, and a set with a class it does not know is refused."""
    full, short, unknown = (voc_copy(formats, tmp_path, n) for n in ("full", "short", "unknown"))
    for root in (full, short):
        drop_class(root, "circle", "val")
    (short / "ImageSets/Main/train.txt").write_text((short / "ImageSets/Main/val.txt").read_text())
    xml = next((unknown / "Annotations").glob("*.xml"))
    xml.write_text(re.sub(r"<name>\w+</name>", "<name>hexagon</name>", xml.read_text(), count=1))
    common = [f"checkpoint={trained_run}/checkpoints/last.pt", "data=voc", "data.image_size=64", "data.num_workers=0"]
    metrics = {}
    for name, root in (("full", full), ("short", short)):
        detcli("eval", *common, f"data.root={root}", f"hydra.run.dir={tmp_path}/{name}_eval")
        metrics[name] = json.loads((tmp_path / f"{name}_eval" / "metrics.json").read_text())
    assert {k: v for k, v in metrics["full"].items() if k.startswith("map")} == \
        {k: v for k, v in metrics["short"].items() if k.startswith("map")}
    refused = detcli("eval", *common, f"data.root={unknown}", f"hydra.run.dir={tmp_path}/refused", check=False)
    assert refused.returncode == 1 and "hexagon" in refused.stderr and str(NAMES) in refused.stderr
