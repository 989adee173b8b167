"""`detcli eval`'s report: per-class table, detections.json, both PNGs, scoring a results file
(`detections=`) to the same numbers; VOC AP and the confusion matrix by hand."""

import json

import numpy as np
import pytest
import torch
from conftest import detcli

from detcli.evaluation.coco import STAT_KEYS
from detcli.evaluation.confusion import confusion_matrix
from detcli.evaluation.voc import ap_11_point, ap_area, voc_ap


def test_eval_writes_the_report_and_a_results_file_scores_the_same(trained_run, tmp_path):
    ckpt = f"checkpoint={trained_run}/checkpoints/best.pt"
    proc = detcli("eval", ckpt, "voc=true", "confusion.score_thresh=0.0", f"hydra.run.dir={tmp_path}/model")
    model = json.loads((tmp_path / "model" / "metrics.json").read_text())
    for name in ("detections.json", "pr_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "model" / name).stat().st_size > 100, name
    assert (tmp_path / "model" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert [c["class"] for c in model["per_class"]] == ["circle", "square", "triangle"]
    assert all(k in model for k in STAT_KEYS) and "per class" in proc.stdout and "recall" in proc.stdout
    counts = np.array(model["confusion_matrix"]["counts"])
    gt = sum(c["gt"] for c in model["per_class"])
    assert counts.shape == (4, 4) and counts[:, :3].sum() == gt  # every object is in one column once
    assert 0 <= model["voc"]["map_50_area"] <= 1
    tide = model["tide"]  # the AP50 recovered per error type, and what is left to recover adds up below 1
    assert set(tide["delta"]) == {"cls", "loc", "both", "dupe", "bkg", "missed", "fp", "fn"}
    assert all(v >= -1e-9 for v in tide["delta"].values()) and tide["ap_50"] + tide["delta"]["fp"] <= 1 + 1e-9
    assert "TIDE" in proc.stdout and len(tide["per_class"]) == 3
    detections = json.loads((tmp_path / "model" / "detections.json").read_text())
    assert len(detections) == sum(c["dets"] for c in model["per_class"]) > 0
    assert set(detections[0]) == {"image_id", "category_id", "bbox", "score"}

    detcli("eval", f"detections={tmp_path}/model/detections.json", ckpt, f"hydra.run.dir={tmp_path}/file")
    again = json.loads((tmp_path / "file" / "metrics.json").read_text())
    assert {k: again[k] for k in STAT_KEYS} == pytest.approx({k: model[k] for k in STAT_KEYS}, abs=1e-6)
    assert again["per_class"] == model["per_class"] and again["checkpoint"] is not None


def test_eval_sets_postprocess_keys_over_the_checkpoints(trained_run, tmp_path):
    ckpt = f"checkpoint={trained_run}/checkpoints/best.pt"
    detcli("eval", ckpt, "postprocess.nms_thresh=0.3", "postprocess.vote_iou=0.6", "postprocess.max_det=2",
           "worst=0", "plots=false", f"hydra.run.dir={tmp_path}/pp")
    model = json.loads((tmp_path / "pp" / "metrics.json").read_text())
    assert model["postprocess"]["nms_thresh"] == 0.3 and model["postprocess"]["vote_iou"] == 0.6
    assert model["postprocess"]["score_thresh"] == 0.05  # kept: the checkpoint's (head=fcos)
    per_image = {}
    for d in json.loads((tmp_path / "pp" / "detections.json").read_text()):
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert per_image and max(per_image.values()) <= 2
    # a key FCOS's postprocess does not have (Faster R-CNN's min_size): named, with the keys it has
    proc = detcli("eval", ckpt, "postprocess.min_size=1", f"hydra.run.dir={tmp_path}/bad", check=False)
    assert proc.returncode != 0 and "postprocess.min_size" in proc.stderr and "vote_iou" in proc.stderr


def test_eval_without_checkpoint_or_detections_says_what_it_needs(tmp_path, cache_dir):
    proc = detcli("eval", f"hydra.run.dir={tmp_path}/e", check=False)
    assert proc.returncode != 0 and "checkpoint=PATH" in proc.stderr and "detections=" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    proc = detcli("eval", f"detections={bad}", "data.num_val=4", f"hydra.run.dir={tmp_path}/e", check=False)
    assert proc.returncode != 0 and "entry 0" in proc.stderr and "category_id" in proc.stderr


def dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def gts(boxes, labels, crowd=None):
    g = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if crowd is not None:
        g["iscrowd"] = torch.tensor(crowd)
    return g


def test_voc_ap_by_hand():
    """Class 0: 3 objects (one difficult); detections by score: hit, false positive, duplicate of the first,
    hit, one on the difficult object (neither). tp = 1,1,1,2 and fp = 0,1,2,2 over 2 positives:
    recall .5 .5 .5 1, precision 1 .5 .33 .5. 11-point: t <= .5 -> 1 (6 points), t > .5 -> .5 (5) = 8.5 / 11;
    area: .5 x 1 + .5 x .5 = .75."""
    g = [gts([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 0], crowd=[0, 0, 1])]
    d = [dets([[0, 0, 10, 10], [60, 60, 70, 70], [0, 0, 10, 10.5], [20, 20, 30, 30], [40, 40, 50, 50]],
              [0.9, 0.8, 0.7, 0.6, 0.5], [0, 0, 0, 0, 0])]
    (c0, c1) = voc_ap(d, g, 2)
    assert c0["ap_11"] == pytest.approx(8.5 / 11) and c0["ap_area"] == pytest.approx(0.75)
    assert c1 == {"ap_11": -1.0, "ap_area": -1.0}
    assert ap_area(np.array([1.0]), np.array([1.0])) == 1.0 and ap_11_point(np.array([0.5]), np.array([1.0])) == 6 / 11


def test_confusion_matrix_by_hand():
    """Image 1: a circle found as a circle, a square found as a triangle, a triangle missed, a lone square
    detection, one below the score threshold; image 2: a detection on a crowd region (ignored), nothing else."""
    d = [dets([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [80, 80, 90, 90]], [0.9, 0.8, 0.7, 0.1],
              [0, 2, 1, 0]),
         dets([[0, 0, 100, 100]], [0.9], [1])]
    g = [gts([[0, 0, 10, 10], [20, 20, 30, 31], [100, 100, 120, 120]], [0, 1, 2]),
         gts([[0, 0, 100, 100]], [2], crowd=[1])]
    m = confusion_matrix(d, g, 3, score_thresh=0.25, iou_thresh=0.45)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1  # circle -> circle
    expected[2, 1] = 1  # square predicted as triangle
    expected[3, 2] = 1  # triangle missed (background row)
    expected[1, 3] = 1  # a square where nothing is (background column)
    np.testing.assert_array_equal(m, expected)
