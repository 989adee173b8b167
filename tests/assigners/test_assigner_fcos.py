"""FCOS assignment on hand-built point grids, checked against hand-computed answers."""

import math

import torch

from detcli.assigners.fcos import FCOSAssigner, default_size_ranges


def grid(stride: int, n: int):
    """Centres of an n x n grid of cells of size stride: (n*n, 2) and strides (n*n,)."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1), torch.full((n * n,), float(stride))


def test_default_ranges_follow_fcos():
    assert default_size_ranges([8, 16, 32, 64, 128]) == [
        (0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf)
    ]


def test_points_inside_box_without_center_sampling():
    # one level, stride 8, 4x4 points at 4, 12, 20, 28; box (6, 6, 22, 22) holds x, y in {12, 20}
    points, strides = grid(8, 4)
    a = FCOSAssigner([8], center_radius=None, size_ranges=[[0, 1000]])
    boxes = torch.tensor([[[6.0, 6.0, 22.0, 22.0]]])
    matched = a(points, strides, [16], boxes, torch.tensor([[True]]))
    expected = torch.full((1, 16), -1)
    for i, (x, y) in enumerate(points.tolist()):
        if x in (12, 20) and y in (12, 20):
            expected[0, i] = 0
    assert torch.equal(matched, expected)


def test_center_sampling_keeps_points_near_the_centre():
    # box (0, 0, 64, 64), centre (32, 32); radius 1.0 * stride 8 -> region (24, 40) exclusive:
    # only the points at 28 and 36 on each axis qualify
    points, strides = grid(8, 8)
    a = FCOSAssigner([8], center_radius=1.0, size_ranges=[[0, 1000]])
    matched = a(points, strides, [64], torch.tensor([[[0.0, 0.0, 64.0, 64.0]]]), torch.tensor([[True]]))
    pos = {tuple(p) for p, m in zip(points.tolist(), matched[0].tolist()) if m == 0}
    assert pos == {(28.0, 28.0), (28.0, 36.0), (36.0, 28.0), (36.0, 36.0)}


def test_size_range_picks_the_level():
    # two levels over the same area; a 40 px box (max ltrb <= 40 -> in [0, 64]) goes to level 0 only,
    # a 200 px box (max ltrb >= 64 somewhere) only to level 1 points whose max distance is >= 64
    p0, s0 = grid(8, 32)  # 256 x 256
    p1, s1 = grid(16, 16)
    points, strides = torch.cat([p0, p1]), torch.cat([s0, s1])
    a = FCOSAssigner([8, 16], center_radius=None)  # ranges (0, 64), (64, inf)
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 50.0]], [[20.0, 20.0, 220.0, 220.0]]])
    matched = a(points, strides, [1024, 256], boxes, torch.ones(2, 1, dtype=torch.bool))
    small, large = matched[0], matched[1]
    assert (small[1024:] == -1).all() and (small[:1024] == 0).sum() == 25  # 5 x 5 points at 12..44
    d = torch.cat([points - boxes[1, 0, :2], boxes[1, 0, 2:] - points], 1)
    inside = d.min(1).values > 0
    in_l1 = inside & (d.max(1).values >= 64) & (strides == 16)
    in_l0 = inside & (d.max(1).values <= 64) & (strides == 8)
    assert torch.equal(large == 0, in_l1 | in_l0)
    assert (large[1024:] == 0).sum() > 0


def test_smallest_box_wins_and_ties_take_the_first():
    points, strides = grid(8, 4)
    a = FCOSAssigner([8], center_radius=None, size_ranges=[[0, 1000]])
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0], [8.0, 8.0, 24.0, 24.0]]])
    matched = a(points, strides, [16], boxes, torch.ones(1, 3, dtype=torch.bool))
    for (x, y), m in zip(points.tolist(), matched[0].tolist()):
        assert m == (1 if 8 < x < 24 and 8 < y < 24 else 0)


def test_empty_images_and_padding_are_background():
    points, strides = grid(8, 4)
    a = FCOSAssigner([8], center_radius=1.5, size_ranges=[[0, 1000]])
    # image 0 has one box, image 1 only padding (the collate's -1 labels -> valid False)
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0]], [[0.0, 0.0, 32.0, 32.0]]])
    valid = torch.tensor([[True], [False]])
    matched = a(points, strides, [16], boxes, valid)
    assert (matched[0] >= 0).any() and (matched[1] == -1).all()
    # a batch with no boxes at all (M = 0)
    none = a(points, strides, [16], torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert none.shape == (2, 16) and (none == -1).all()
