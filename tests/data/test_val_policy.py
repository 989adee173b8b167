"""data.on_bad=skip|clip makes training possible but never rewrites the validation ground truth: boxes
are evaluated as annotated (one leaving the image included, unclipped); only what cannot be evaluated
is left out, and the eval output says so."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import detcli
from PIL import Image

from detcli.data.coco import CocoData


def png(path: Path, size=(64, 64)) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8)).save(path)


def defective_val(root: Path) -> Path:
    """a.png with a good box, one leaving the image and three no detection can match; b.png missing,
    c.png unreadable, d.png 64x64 where its annotation says 80x80."""
    png(root / "a.png")
    png(root / "d.png")
    (root / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images = [{"id": i, "file_name": f"{n}.png", "width": 64, "height": 64} for i, n in enumerate("abc", 1)]
    images.append({"id": 4, "file_name": "d.png", "width": 80, "height": 80})
    boxes = [(1, 1, [8, 8, 20, 20]), (1, 1, [50, 10, 40, 20]), (1, 1, [10, 10, 0, 20]), (1, 1, [math.nan, 1, 5, 5]),
             (1, 99, [5, 5, 10, 10]), (2, 1, [8, 8, 20, 20]), (3, 1, [8, 8, 20, 20]), (4, 1, [10, 20, 40, 20])]
    anns = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": 1.0, "iscrowd": 0}
            for k, (i, c, b) in enumerate(boxes)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "circle"}]}))
    return root / "ann.json"


@pytest.mark.parametrize("on_bad", ["skip", "clip"])
def test_val_ground_truth_is_kept_as_annotated(tmp_path, on_bad):
    ann = defective_val(tmp_path)
    data = CocoData(train_ann=str(ann), train_images=str(tmp_path), val_ann=str(ann), val_images=str(tmp_path),
                    image_size=64, hflip=0.0, batch_size=4, num_workers=0, on_bad=on_bad)
    val = data.dataset("val")
    batch = next(iter(data.val_loader(val)))  # what the evaluator gives the metric
    gt = {m["file_name"]: m["gt"] for m in batch["meta"]}
    assert sorted(gt) == ["a.png", "d.png"]  # b and c cannot be read: left out, named below
    torch.testing.assert_close(gt["a.png"]["boxes"], torch.tensor([[8.0, 8, 28, 28], [50, 10, 90, 30]]))
    assert gt["a.png"]["labels"].tolist() == [0, 0]
    torch.testing.assert_close(gt["d.png"]["boxes"], torch.tensor([[10.0, 20, 50, 40]]) * 0.8)  # to the file's size
    assert len(val.defects) == 7
    for text in ("does not rewrite", "except 3 that no detection can match", "2 images", "b.png", "c.png"):
        assert text in val.defect_note, (text, val.defect_note)
    train_boxes = data.dataset("train").records[0].boxes  # training still gets the policy
    assert train_boxes.tolist() == ([[8, 8, 28, 28], [50, 10, 64, 30]] if on_bad == "clip" else [[8, 8, 28, 28]])


def test_clean_val_has_no_note(tmp_path):
    png(tmp_path / "a.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25}],
           "categories": [{"id": 1, "name": "circle"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    val = CocoData(val_ann=str(tmp_path / "ann.json"), val_images=str(tmp_path), on_bad="skip").dataset("val")
    assert val.defects == [] and val.defect_note == ""


def test_eval_reports_val_defects(tmp_path, trained_run):
    ann = defective_val(tmp_path)
    proc = detcli("eval", f"checkpoint={trained_run}/checkpoints/last.pt", "data=coco", f"data.val_ann={ann}",
                  f"data.val_images={tmp_path}", "data.on_bad=skip", "data.image_size=64", "data.num_workers=0",
                  f"hydra.run.dir={tmp_path}/eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["val_defects"] == 7
    assert "does not rewrite" in metrics["val_note"] and "c.png" in metrics["val_note"]
    assert "does not rewrite validation ground truth" in proc.stdout.replace("\n", " ")
