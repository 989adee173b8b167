"""Max-IoU matcher and balanced sampler on hand-built boxes, checked against hand-computed answers."""

import torch

from detcli.assigners.max_iou import BACKGROUND, IGNORE, BalancedSampler, MaxIoUMatcher


def match(matcher, gt, boxes, valid=None):
    gt = torch.tensor([gt], dtype=torch.float32).reshape(1, -1, 4)
    valid = torch.ones(gt.shape[:2], dtype=torch.bool) if valid is None else torch.tensor([valid])
    return matcher(gt, valid, torch.tensor([boxes], dtype=torch.float32))[0].tolist()


def test_thresholds_without_low_quality_matches():
    # gt (0,0,10,10), area 100; boxes of IoU 1.0, 0.5 (half of it), 0.2, 0.7 (exactly high)
    boxes = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 2], [0, 0, 10, 7]]
    m = MaxIoUMatcher(high=0.7, low=0.3, allow_low_quality=False)
    assert match(m, [[0, 0, 10, 10]], boxes) == [0, IGNORE, BACKGROUND, 0]


def test_each_box_takes_its_best_gt():
    # gt 0 (0,0,10,10), gt 1 (5,0,15,10); box (6,0,16,10) overlaps gt 0 by 4/116, gt 1 by 9/11
    m = MaxIoUMatcher(high=0.5, low=0.5, allow_low_quality=False)
    assert match(m, [[0, 0, 10, 10], [5, 0, 15, 10]], [[6, 0, 16, 10], [0, 0, 9, 10]]) == [1, 0]


def test_low_quality_matches_promote_each_gts_best_boxes_ties_included():
    gts = [[0, 0, 10, 10], [100, 100, 110, 110]]
    boxes = [
        [0, 0, 10, 4],  # IoU 0.4 with gt 0 (ignored by the thresholds), its best: promoted
        [0, 0, 10, 3],  # IoU 0.3 with gt 0: not the best, stays ignored
        [100, 100, 110, 102.5],  # IoU 0.25 with gt 1 (background by the thresholds), tied best: promoted
        [100, 107.5, 110, 110],  # the same IoU 0.25: promoted too
        [100, 100, 110, 101],  # IoU 0.1: background
    ]
    m = MaxIoUMatcher(high=0.7, low=0.3, allow_low_quality=True)
    assert match(m, gts, boxes) == [0, IGNORE, 1, 1, BACKGROUND]
    m = MaxIoUMatcher(high=0.7, low=0.3, allow_low_quality=False)
    assert match(m, gts, boxes) == [IGNORE, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND]


def test_a_gt_that_overlaps_nothing_promotes_nothing():
    m = MaxIoUMatcher(high=0.7, low=0.3, allow_low_quality=True)
    assert match(m, [[200, 200, 210, 210]], [[0, 0, 10, 10], [20, 20, 30, 30]]) == [BACKGROUND, BACKGROUND]


def test_no_gt_and_padding_only():
    m = MaxIoUMatcher()
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 5, 20, 20]]])
    assert m(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool), boxes).tolist() == [[BACKGROUND] * 2]
    # a padded gt slot (invalid) lying exactly on a box matches nothing
    assert match(m, [[0, 0, 10, 10]], boxes[0].tolist(), valid=[False]) == [BACKGROUND] * 2


def test_chunked_matching_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 7, 2, generator=g) * 100
    gt = torch.cat([gt, gt + 5 + torch.rand(3, 7, 2, generator=g) * 50], -1)
    boxes = torch.rand(1, 500, 2, generator=g) * 100
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(1, 500, 2, generator=g) * 50], -1)
    valid = torch.rand(3, 7, generator=g) > 0.3
    one = MaxIoUMatcher(0.6, 0.4)(gt, valid, boxes)
    chunked = MaxIoUMatcher(0.6, 0.4, max_elements=3 * 7 * 37)(gt, valid, boxes)  # 14 chunks
    assert torch.equal(one, chunked)


def matched_row(pos, neg, ignored=0):
    return torch.tensor([[0] * pos + [BACKGROUND] * neg + [IGNORE] * ignored])


def test_sampler_fractions():
    torch.manual_seed(0)
    pos, neg = BalancedSampler(16, 0.25)(matched_row(10, 100, 5))
    assert pos.sum() == 4 and neg.sum() == 12
    assert pos[0, :10].sum() == 4 and neg[0, 10:110].sum() == 12  # from the right kind, never the ignored


def test_sampler_fills_with_negatives_when_positives_are_few():
    torch.manual_seed(0)
    pos, neg = BalancedSampler(16, 0.5)(matched_row(2, 100))
    assert pos.sum() == 2 and neg.sum() == 14


def test_sampler_takes_what_there_is_and_respects_validity():
    torch.manual_seed(0)
    pos, neg = BalancedSampler(16, 0.5)(matched_row(3, 5, 10))
    assert pos.sum() == 3 and neg.sum() == 5
    valid = torch.tensor([[True, False, True] + [True] * 5 + [True] * 10])
    pos, neg = BalancedSampler(16, 0.5)(matched_row(3, 5, 10), valid)
    assert pos.sum() == 2 and not pos[0, 1] and neg.sum() == 5


def test_sampler_is_random_and_per_image():
    matched = torch.cat([matched_row(50, 50), matched_row(10, 90)])  # (2, 100)
    torch.manual_seed(0)
    a, _ = BalancedSampler(8, 0.5)(matched)
    torch.manual_seed(1)
    b, _ = BalancedSampler(8, 0.5)(matched)
    assert a.sum(1).tolist() == [4, 4] and b.sum(1).tolist() == [4, 4]
    assert not torch.equal(a, b)
    assert not a[1, 10:].any()  # image 1 has only 10 positives
