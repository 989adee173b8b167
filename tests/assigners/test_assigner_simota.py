"""SimOTA on a hand-built row of points, checked against costs, dynamic k and matches worked out here.

Every case uses one level of stride 8 with four points in a row at x = 4, 12, 20, 28 (y = 4), so the
centre radius 2.5 x 8 = 20 px, and two classes.
"""

import math

import torch

from detcli.assigners.simota import SimOTAAssigner

POINTS = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])  # (R=4, 2)
STRIDES = torch.full((4,), 8.0)
FAR = [100.0, 100.0, 110.0, 110.0]  # a prediction that overlaps nothing (IoU 0)


def bce_cost(p: list[float], label: int) -> float:
    """Class cost by hand: BCE of the probabilities against the one-hot label, summed over classes."""
    return sum(-math.log(q) if c == label else -math.log(1 - q) for c, q in enumerate(p))


def test_costs_dynamic_k_and_matches_by_hand():
    # gt (0, 0, 16, 8), centre (8, 4), class 0.
    #   inside the box (strictly): x = 4, 12.   within 20 px of the centre: x = 4, 12, 20 (|28 - 8| = 20 is not < 20)
    #   candidates: x = 4, 12, 20; x = 28 is none, although its prediction is perfect.
    # predictions: x=4 -> (0,0,14,8): IoU 112/128 = 0.875; x=12 -> the gt itself: IoU 1;
    #   x=20 -> (12,0,20,8): inter 4x8 = 32, union 128 + 64 - 32 = 160, IoU 0.2; x=28 -> the gt (IoU 1)
    # dynamic k = floor(0.875 + 1 + 0.2) = 2
    probs = [[0.8, 0.1], [0.6, 0.3], [0.9, 0.1], [0.9, 0.1]]
    preds = torch.tensor([[[0.0, 0, 14, 8], [0, 0, 16, 8], [12, 0, 20, 8], [0, 0, 16, 8]]])
    gt = torch.tensor([[[0.0, 0.0, 16.0, 8.0]]])
    a = SimOTAAssigner()
    cost = [
        bce_cost(probs[0], 0) + 3 * -math.log(0.875),  # 0.3285 + 0.4006 = 0.729
        bce_cost(probs[1], 0) + 3 * -math.log(1.0),  # 0.8675
        bce_cost(probs[2], 0) + 3 * -math.log(0.2) + 1e5,  # outside the box: penalised
    ]
    assert cost[0] < cost[1] < cost[2]
    cls_cost = a.class_cost(torch.tensor([probs]), torch.tensor([[0]]))[0, 0]
    assert torch.allclose(cls_cost, torch.tensor([bce_cost(p, 0) for p in probs]), atol=1e-5)
    matched, ious = a(POINTS, STRIDES, torch.tensor([probs]), preds, gt, torch.tensor([[0]]))
    assert matched.tolist() == [[0, 0, -1, -1]]  # the two cheapest candidates
    assert torch.allclose(ious, torch.tensor([[0.875, 1.0, 0.0, 0.0]]), atol=1e-6)


def test_dynamic_k_is_at_least_one_and_follows_the_ious():
    # the same gt with poor predictions: IoUs 0.25 (x=4: (0,0,4,8)), 0.5 (x=12: (8,0,16,8)), 0 -> k = floor(0.75) -> 1
    preds = torch.tensor([[[0.0, 0, 4, 8], [8, 0, 16, 8], FAR, FAR]])
    probs = torch.full((1, 4, 2), 0.5)
    matched, ious = SimOTAAssigner()(POINTS, STRIDES, probs, preds, torch.tensor([[[0.0, 0, 16, 8]]]),
                                     torch.tensor([[1]]))
    # equal class costs: the larger IoU (x=12) is the cheaper point
    assert matched.tolist() == [[-1, 0, -1, -1]]
    assert ious[0, 1].item() == 0.5


def test_image_without_boxes_is_all_background():
    probs = torch.full((2, 4, 2), 0.5)
    preds = torch.tensor([FAR] * 4).expand(2, 4, 4)
    for boxes, labels in ((torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)),
                          (torch.zeros(2, 1, 4), torch.full((2, 1), -1))):  # no slot / a padding slot
        matched, ious = SimOTAAssigner()(POINTS, STRIDES, probs, preds, boxes, labels)
        assert matched.tolist() == [[-1] * 4] * 2
        assert ious.abs().sum() == 0


def test_a_box_smaller_than_every_stride_still_gets_one_point():
    # gt (13, 1, 15, 3): no point is inside it, but every point is within 20 px of its centre (14, 2), so all
    # four are candidates, all penalised; IoUs: x=20 -> (12,0,16,4): inter 2x2 = 4, union 16 + 4 - 4 = 16, 0.25;
    # the rest 0 -> k = max(1, floor(0.25)) = 1, and the best-IoU point takes it
    preds = torch.tensor([[FAR, FAR, [12.0, 0, 16, 4], FAR]])
    probs = torch.full((1, 4, 2), 0.5)
    matched, ious = SimOTAAssigner()(POINTS, STRIDES, probs, preds, torch.tensor([[[13.0, 1, 15, 3]]]),
                                     torch.tensor([[0]]))
    assert matched.tolist() == [[-1, -1, 0, -1]]
    assert abs(ious[0, 2].item() - 0.25) < 1e-6


def test_two_boxes_competing_for_one_point_keep_the_cheaper():
    # A = (0,0,16,8) class 0, B = (8,0,24,8) class 1; only x=12 predicts anything near: (8,0,16,8),
    # IoU 0.5 with both -> k = 1 for both, and both take x=12. Class costs there (p = [0.9, 0.2]):
    # A: -log 0.9 - log 0.8 = 0.329; B: -log 0.1 - log 0.2 = 3.912 -> A keeps it, B is left without a point.
    preds = torch.tensor([[FAR, [8.0, 0, 16, 8], FAR, FAR]])
    probs = torch.tensor([[[0.5, 0.5], [0.9, 0.2], [0.5, 0.5], [0.5, 0.5]]])
    gts = torch.tensor([[[0.0, 0, 16, 8], [8.0, 0, 24, 8]]])
    a = SimOTAAssigner()
    matched, _ = a(POINTS, STRIDES, probs, preds, gts, torch.tensor([[0, 1]]))
    assert matched.tolist() == [[-1, 0, -1, -1]]
    # with the classes swapped, B is the cheaper claimant
    matched, _ = a(POINTS, STRIDES, probs, preds, gts, torch.tensor([[1, 0]]))
    assert matched.tolist() == [[-1, 1, -1, -1]]


def test_batched_images_match_as_alone():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 4, 2, generator=g) * 24
    preds = torch.cat([xy, xy + 4 + torch.rand(3, 4, 2, generator=g) * 12], -1)  # (3, 4, 4)
    probs = torch.rand(3, 4, 2, generator=g)
    gts = torch.tensor([[[0.0, 0, 16, 8], [8, 0, 24, 8]], [[4.0, 0, 30, 8], [0, 0, 0, 0]],
                        [[0.0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1], [1, -1], [-1, -1]])
    a = SimOTAAssigner()
    matched, ious = a(POINTS, STRIDES, probs, preds, gts, labels)
    for i in range(3):
        n = int((labels[i] >= 0).sum())
        m1, iou1 = a(POINTS, STRIDES, probs[i:i + 1], preds[i:i + 1], gts[i:i + 1, :n], labels[i:i + 1, :n])
        assert torch.equal(matched[i:i + 1], m1)
        assert torch.allclose(ious[i:i + 1], iou1)
