"""COCO evaluation against pycocotools itself: the 12 statistics on the same detections (<= 1e-4), per-class
numbers, empty cases."""

import numpy as np
import pytest
import torch

from detcli.evaluation.coco import STAT_KEYS, CocoEvaluation


def fixture(seed=0, images=40, classes=3):
    """Per image gt (some crowd, areas across small / medium / large) and noisy detections with misses,
    duplicates and false positives."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.choice([12.0, 50.0, 150.0], (n, 1)) * rng.uniform(0.6, 1.4, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, classes, n)
        crowd = (rng.uniform(size=n) < 0.1).astype(np.int64)
        keep = rng.uniform(size=n) < 0.8  # missed otherwise
        d_boxes = boxes[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
        d_labels = np.where(rng.uniform(size=int(keep.sum())) < 0.9, labels[keep], (labels[keep] + 1) % classes)
        extra = int(rng.integers(0, 4))  # false positives and duplicates
        fp = np.concatenate([rng.uniform(0, 400, (extra, 2)), rng.uniform(0, 400, (extra, 2)) + 20], 1)
        fp = np.concatenate([np.minimum(fp[:, :2], fp[:, 2:]), np.maximum(fp[:, :2], fp[:, 2:])], 1)
        d_boxes = np.concatenate([d_boxes, fp, d_boxes[:1] + 2])
        d_labels = np.concatenate([d_labels, rng.integers(0, classes, extra), d_labels[:1]])
        gts.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                    "iscrowd": torch.tensor(crowd), "area": torch.tensor(wh.prod(1))})
        dets.append({"boxes": torch.tensor(d_boxes, dtype=torch.float32),
                     "scores": torch.tensor(rng.uniform(0.05, 1, len(d_boxes)), dtype=torch.float32),
                     "labels": torch.tensor(d_labels)})
    return gts, dets


def pycocotools_stats(ev: CocoEvaluation) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {"images": ev.images, "annotations": ev.gts,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(ev.class_names)]}
    gt.createIndex()
    dt = gt.loadRes([{k: v for k, v in d.items() if k != "id"} for d in ev.dets])
    e = COCOeval(gt, dt, "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e.stats


def test_twelve_statistics_equal_pycocotools():
    pytest.importorskip("pycocotools")
    gts, dets = fixture()
    ev = CocoEvaluation(["a", "b", "c"])
    ev.update(dets, gts)
    result = ev.compute()
    expected = pycocotools_stats(ev)
    got = np.array([result.stats[k] for k in STAT_KEYS])
    assert (expected[:6] > 0.01).all() and len(ev.dets) > 100
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_per_class_numbers_by_hand():
    """Class a: two gt, one found exactly (the best score) and one missed, plus a false positive below
    it: precision 1 up to recall 0.5, so AP50 = 51 of 101 recall points = 0.505; class b: no gt (-1);
    class c: one gt, found at IoU 0.68 (AP50 1; AP over 0.50:0.95: 4 of 10 thresholds = 0.4)."""
    gts = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 200, 200]]),
            "labels": torch.tensor([0, 0, 2])}]
    dets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [300, 300, 310, 310], [100, 100, 200, 168]]),
             "scores": torch.tensor([0.9, 0.5, 0.8]), "labels": torch.tensor([0, 0, 2])}]
    ev = CocoEvaluation(["a", "b", "c"])
    ev.update(dets, gts)
    a, b, c = ev.compute().per_class
    assert (a["gt"], a["dets"], b["gt"], c["gt"]) == (2, 2, 0, 1)
    assert a["ap_50"] == pytest.approx(51 / 101) and a["recall_50"] == 0.5
    assert b["ap"] == b["ap_50"] == b["recall_50"] == -1
    assert c["ap_50"] == pytest.approx(1.0) and c["ap"] == pytest.approx(0.4) and c["recall_50"] == 1.0


def test_no_detections_and_no_gt():
    ev = CocoEvaluation(["a"])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    ev.update([empty], [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}])
    result = ev.compute()
    assert result.stats["map"] == 0 and result.per_class[0]["recall_50"] == 0
    ev = CocoEvaluation(["a"])
    ev.update([empty], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert ev.compute().stats["map"] == -1
