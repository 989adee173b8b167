"""Task-aligned assignment on a hand-built row of points, checked against alignments, top-k choices and
soft targets worked out here.

One level of stride 8, four points in a row at x = 4, 12, 20, 28 (y = 4), two classes.
"""

import torch

from detcli.assigners.tal import TaskAlignedAssigner

POINTS = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])  # (R=4, 2)
STRIDES = torch.full((4,), 8.0)
FAR = [100.0, 100.0, 110.0, 110.0]  # a prediction that overlaps nothing (IoU 0)


def test_alignment_topk_and_soft_targets_by_hand():
    # gt (0, 0, 24, 8), class 0: points x = 4, 12, 20 inside (x = 28 is not, although its prediction is perfect)
    # predictions: x=4 -> (0,0,12,8): IoU 96/192 = 0.5; x=12 -> (0,0,24,8): IoU 1; x=20 -> (0,0,18,8): IoU 0.75
    # alignment p^0.5 x IoU^6 with p = 0.64, 0.25, 0.81:
    #   x=4: 0.8 x 0.015625 = 0.0125;  x=12: 0.5 x 1 = 0.5;  x=20: 0.9 x 0.177979 = 0.160181
    # topk 2: x=12, x=20.  Largest alignment 0.5, largest IoU of the positives 1:
    #   targets x=12: 0.5 / 0.5 x 1 = 1;  x=20: 0.160181 / 0.5 x 1 = 0.320361
    probs = torch.tensor([[[0.64, 0.1], [0.25, 0.3], [0.81, 0.1], [0.9, 0.1]]])
    preds = torch.tensor([[[0.0, 0, 12, 8], [0, 0, 24, 8], [0, 0, 18, 8], [0, 0, 24, 8]]])
    gt = torch.tensor([[[0.0, 0.0, 24.0, 8.0]]])
    matched, target = TaskAlignedAssigner(topk=2)(POINTS, STRIDES, probs, preds, gt, torch.tensor([[0]]))
    assert matched.tolist() == [[-1, 0, 0, -1]]
    assert torch.allclose(target, torch.tensor([[0.0, 1.0, 0.9 * 0.75**6 / 0.5, 0.0]]), atol=1e-5)
    # topk 10 takes every candidate, and still no point outside the box
    matched, target = TaskAlignedAssigner(topk=10)(POINTS, STRIDES, probs, preds, gt, torch.tensor([[0]]))
    assert matched.tolist() == [[0, 0, 0, -1]]
    assert abs(target[0, 0].item() - 0.8 * 0.5**6 / 0.5) < 1e-6


def test_a_point_claimed_by_two_boxes_keeps_the_one_it_overlaps_most():
    # gt a (0, 0, 16, 8) class 0 and gt b (8, 0, 24, 8) class 1 both hold x = 12; its prediction (6, 0, 22, 8)
    # overlaps a by 10x8 / (128 + 128 - 80) = 80/176 and b by 14x8 / (128 + 128 - 112) = 112/144: b keeps it.
    # Every point's prediction is that box; x = 4 is only in a, x = 20 only in b.
    probs = torch.full((1, 4, 2), 0.5)
    preds = torch.tensor([[6.0, 0, 22, 8]]).expand(1, 4, 4)
    gt = torch.tensor([[[0.0, 0, 16, 8], [8.0, 0, 24, 8]]])
    matched, target = TaskAlignedAssigner(topk=2)(POINTS, STRIDES, probs, preds, gt, torch.tensor([[0, 1]]))
    assert matched.tolist() == [[0, 1, 1, -1]]
    # a keeps x = 4 alone: its target is its own largest IoU, 80/176; b's two points have equal alignment
    assert torch.allclose(target, torch.tensor([[80 / 176, 112 / 144, 112 / 144, 0.0]]), atol=1e-5)


def test_images_without_boxes_and_unreachable_boxes():
    probs = torch.full((2, 4, 2), 0.5)
    preds = torch.tensor([FAR] * 4).expand(2, 4, 4)
    a = TaskAlignedAssigner()
    for boxes, labels in ((torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)),
                          (torch.zeros(2, 1, 4), torch.full((2, 1), -1))):  # no slot / a padding slot
        matched, target = a(POINTS, STRIDES, probs, preds, boxes, labels)
        assert matched.tolist() == [[-1] * 4] * 2
        assert target.abs().sum() == 0
    # a box between points holds none: unreachable, never matched; the one over x = 12 is reachable
    boxes = torch.tensor([[[13.0, 1, 15, 3], [10.0, 2, 14, 6]]])
    valid = torch.tensor([[True, True]])
    assert a.reachable(POINTS, STRIDES, boxes, valid).tolist() == [[False, True]]
    matched, _ = a(POINTS, STRIDES, probs[:1], preds[:1], boxes, torch.tensor([[0, 1]]))
    assert matched.tolist() == [[-1, 1, -1, -1]]
