"""Tiles (detcli/data/tiles.py): windows flush with the edges, a box crossing a seam kept in both tiles when each
holds at least min_visible of it and dropped where it would be a sliver, and tiled training records read as the
windows of their image."""

import numpy as np
import torch

from detcli.data.base import DetectionDataset, ImageRecord
from detcli.data.tiles import Tiling, cut, starts, tile_records, windows


def test_windows_step_by_the_overlap_and_end_at_the_edge():
    assert starts(1000, 400, 0.25) == [0, 300, 600]  # 600 + 400 = 1000: flush
    assert starts(1100, 400, 0.25) == [0, 300, 600, 700]
    assert starts(300, 400, 0.25) == [0]
    assert windows(500, 300, Tiling(400, 0.5)).tolist() == [[0, 0, 400, 300], [100, 0, 500, 300]]


def test_a_box_across_the_seam_is_kept_in_both_tiles_by_the_rule():
    # windows [0, 400) and [300, 700) along x; the box spans x 280..420 (140 wide)
    boxes = np.array([[280.0, 10, 420, 50], [380.0, 60, 410, 90]], dtype=np.float32)
    left, right = np.array([0, 0, 400, 400]), np.array([300, 0, 700, 400])
    kept, clipped = cut(boxes, left, 0.5)  # the first box: 120 / 140 inside; the second: 20 / 30
    assert kept.tolist() == [True, True] and clipped.tolist() == [[280, 10, 400, 50], [380, 60, 400, 90]]
    kept, clipped = cut(boxes, right, 0.5)  # 120 / 140 and 30 / 30, shifted by x0 = 300
    assert kept.tolist() == [True, True] and clipped.tolist() == [[0, 10, 120, 50], [80, 60, 110, 90]]
    kept, _ = cut(boxes, left, 0.9)  # 120 / 140 = 0.86 < 0.9: a sliver here, dropped
    assert kept.tolist() == [False, False]


def test_tiled_records_load_their_window(tmp_path):
    from torchvision.io import write_png

    image = torch.arange(3 * 300 * 500, dtype=torch.int64).reshape(3, 300, 500).remainder(251).to(torch.uint8)
    write_png(image, str(tmp_path / "big.png"))
    rec = ImageRecord(1, "big.png", 300, 500, np.array([[90.0, 20, 130, 60]], dtype=np.float32), np.array([2]),
                      np.zeros(1, bool), np.array([1600.0]))
    small = ImageRecord(2, "small.png", 100, 100, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))
    tiles = tile_records([rec, small], Tiling(400, 0.5))
    assert [t.window for t in tiles[:2]] == [(0, 0, 400, 300), (100, 0, 500, 300)] and tiles[2] is small
    assert tiles[1].boxes.tolist() == [[0, 20, 30, 60]] and tiles[1].labels.tolist() == [2]  # 30 / 40 wide: kept
    ds = DetectionDataset(tiles[:2], tmp_path, transforms=lambda im, t: (im, t), train=True)
    loaded, boxes, _, _ = ds.load(1)
    assert torch.equal(loaded, image[:, :, 100:500]) and boxes.tolist() == [[0, 20, 30, 60]]


def test_data_check_says_when_tiles_raise_the_recall_ceiling(tmp_path, cache_dir):
    """At 32 px the toy objects (128 px images) shrink under what FCOS reaches; tiles of 32 px keep them whole."""
    import json

    from conftest import detcli

    proc = detcli("data", "check", "experiment=toy", "data.image_size=32", "plots=false", "duplicates.enabled=false",
                  "scale_fit.max_images=64", f"hydra.run.dir={tmp_path}")
    fit = json.loads((tmp_path / "data_check.json").read_text())["scale_fit"]
    assert fit["tiling"]["raises"] and fit["tiling"]["ceiling"] > fit["all"]["ceiling"]
    assert "data.tile={size:32,overlap:0.2}" in proc.stdout
