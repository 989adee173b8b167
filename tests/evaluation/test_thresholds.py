"""detcli/evaluation/thresholds.py by hand: the F1-optimal score per class (ties, crowd objects, classes
without objects, detections or true positives), each image's missed / false boxes at those thresholds, and
the ranking of the worst images."""

import pytest
import torch

from detcli.evaluation.thresholds import f1_thresholds, image_errors, worst_images


def box(k: int) -> list[float]:
    """A 10 x 10 box on a row, far from every other k."""
    return [20.0 * k, 0.0, 20.0 * k + 10, 10.0]


def image(dets, gts, crowd=None):
    d = {"boxes": torch.tensor([box(k) for k, _, _ in dets], dtype=torch.float32).reshape(-1, 4),
         "scores": torch.tensor([s for _, s, _ in dets], dtype=torch.float32),
         "labels": torch.tensor([c for _, _, c in dets], dtype=torch.int64)}
    g = {"boxes": torch.tensor([box(k) for k, _ in gts], dtype=torch.float32).reshape(-1, 4),
         "labels": torch.tensor([c for _, c in gts], dtype=torch.int64),
         "iscrowd": torch.tensor(crowd or [0] * len(gts), dtype=torch.int64)}
    return d, g


# (box slot, score, class) per detection; (box slot, class) per object
IMAGES = [
    image([(0, 0.9, 0), (1, 0.8, 0), (2, 0.6, 0), (3, 0.4, 0), (5, 0.35, 2), (6, 0.2, 2)], [(0, 0), (2, 0)]),
    image([(0, 0.5, 0), (1, 0.95, 0)], [(0, 0), (1, 0), (2, 1)], crowd=[0, 1, 0]),
    image([(0, 0.9, 3), (1, 0.5, 3), (2, 0.5, 3), (3, 0.5, 3), (4, 0.5, 3)], [(0, 3), (1, 3)]),
    image([], []),
]


def test_f1_thresholds_by_hand():
    dets, gts = zip(*IMAGES)
    thresholds = f1_thresholds(list(dets), list(gts), 5)
    # class 0, 3 objects (the crowd one and the 0.95 detection on it are ignored), best first:
    # 0.9 TP (F1 0.5), 0.8 FP (0.4), 0.6 TP (2/3), 0.5 TP (P 3/4, R 1: F1 6/7), 0.4 FP (0.75)
    assert thresholds[0] == pytest.approx(0.5)
    # class 3, 2 objects: 0.9 TP (P 1, R 1/2: F1 2/3); at 0.5 all four of equal score are kept (TP 2, FP 3:
    # F1 4/7), although the first of them alone would give F1 1
    assert thresholds[3] == pytest.approx(0.9)
    assert thresholds[1] is None  # objects, no detections
    assert thresholds[2] is None  # detections, no objects
    assert thresholds[4] is None  # neither


def test_f1_threshold_is_none_without_a_true_positive():
    d, g = image([(1, 0.7, 0)], [(0, 0)])
    assert f1_thresholds([d], [g], 1) == [None]


def test_image_errors_and_the_worst_images():
    dets, gts = zip(*IMAGES)
    thresholds = f1_thresholds(list(dets), list(gts), 5)  # [0.5, None, None, 0.9, None], the scores' float32
    errors = image_errors(list(dets), list(gts), thresholds, default=0.3)
    # image 0: class 0 keeps 0.9, 0.8 (false), 0.6; class 2 (default 0.3) keeps 0.35 (false)
    # image 1: class 1's object is missed; image 2: class 3 keeps 0.9 only, its second object is missed
    assert errors == [{"missed": 0, "false": 2}, {"missed": 1, "false": 0}, {"missed": 1, "false": 0},
                      {"missed": 0, "false": 0}]
    assert worst_images(errors, 2) == [0, 1]
    assert worst_images(errors, 16) == [0, 1, 2]  # the image without errors is not drawn
    assert worst_images(errors, 0) == []
