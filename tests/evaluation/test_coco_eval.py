"""COCO evaluation against pycocotools itself: the 12 statistics on the same detections (<= 1e-4), per-class
numbers, empty cases."""

import numpy as np
import pytest
import torch

from benchkit.coco_fixture import fixture, pycocotools_stats
from detcli.evaluation.coco import STAT_KEYS, CocoEvaluation


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
