"""The scale fit (`detcli data check head=...`): each head's rule for which gt boxes can get a positive at all,
by hand on tiny grids, and the CLI report on boxes too large for the configured FCOS ranges, which names the
change that fixes them; yolox and faster_rcnn print their ceilings too."""

import json

import numpy as np
import torch
from conftest import detcli
from PIL import Image

from detcli.assigners.fcos import FCOSAssigner
from detcli.assigners.max_iou import MaxIoUMatcher
from detcli.assigners.simota import SimOTAAssigner
from detcli.evaluation.scale_fit import candidates, scaled
from detcli.ops.points import grid_points


def grid_8px():
    """A 32 x 32 input at stride 8: points at 4, 12, 20, 28 on each axis."""
    return grid_points([(4, 4)], [8])


def test_fcos_reachable_by_hand():
    points, strides = grid_8px()
    assigner = FCOSAssigner([8], center_radius=1.5, size_ranges=[[0, float("inf")]])
    boxes = torch.tensor([[[9.0, 9, 15, 15],  # point (12, 12) strictly inside: reachable
                           [13, 13, 19, 19],  # between the points 12 and 20 on both axes: none inside
                           [1, 1, 31, 31],  # every point it has is also in the next, smaller box, which wins them
                           [1, 1, 30, 30]]])
    reached = assigner.reachable(points, strides, [16], boxes, torch.ones(1, 4, dtype=torch.bool))
    assert reached.tolist() == [[True, False, False, True]]
    capped = FCOSAssigner([8], center_radius=1.5, size_ranges=[[0, 10]])  # the 30 px box's points reach 14+ px
    reached = capped.reachable(points, strides, [16], boxes[:, 3:], torch.ones(1, 1, dtype=torch.bool))
    assert reached.tolist() == [[False]]
    padded = assigner.reachable(points, strides, [16], boxes, torch.tensor([[True, True, False, False]]))
    assert padded.tolist() == [[True, False, False, False]]  # padding never counts


def test_simota_reachable_by_hand():
    points, strides = grid_8px()
    boxes = torch.tensor([[[13.0, 13, 19, 19],  # no point inside, but (12, 12) is within 2.5 strides of its centre
                           [100, 100, 104, 104]]])  # centre 102: the nearest point (28) is 74 px away, past 20
    reached = SimOTAAssigner(center_radius=2.5).reachable(points, strides, boxes, torch.ones(1, 2, dtype=torch.bool))
    assert reached.tolist() == [[True, False]]


def test_rpn_reachable_by_hand():
    anchors = torch.tensor([[[0.0, 0, 32, 32]]])  # (1, N, 4)
    boxes = torch.tensor([[[0.0, 0, 32, 32],  # IoU 1
                           [0, 0, 64, 64],  # IoU 1/4
                           [0, 0, 32, 40]]])  # IoU 32*32 / (32*40) = 0.8
    matcher = MaxIoUMatcher(high=0.7, low=0.3, max_elements=2)  # cut into chunks: the same answer
    assert matcher.reachable(boxes, torch.ones(1, 3, dtype=torch.bool), anchors).tolist() == [[True, False, True]]


def test_candidates_scale_numbers_and_skip_the_rest():
    assert scaled([[0, 32], [32, float("inf")]], 2.0) == [[0, 64], [64, float("inf")]]
    assert scaled(None, 2.0) is None and scaled("auto", 2.0) is None
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data": {"image_size": 256}, "loss": {"assigner": {"size_ranges": None}}})
    tries = {"data.image_size": [0.5, 2.0], "loss.assigner.size_ranges": [2.0], "head.anchor_sizes": [2.0]}
    assert candidates(cfg, tries) == [("data.image_size", 128), ("data.image_size", 512)]


def fixture(root):
    """Two 256 x 256 images, each with a large box and a small one (COCO json)."""
    for i in range(2):
        Image.fromarray(np.full((256, 256, 3), 100 + 50 * i, dtype=np.uint8)).save(root / f"im{i}.png")
    boxes = {0: [[28, 28, 200, 200], [100, 100, 24, 24]], 1: [[28, 28, 200, 200], [30, 30, 24, 30]]}
    anns = [{"id": 10 * i + j, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, bs in boxes.items() for j, b in enumerate(bs)]
    ann = {"images": [{"id": i, "file_name": f"im{i}.png", "width": 256, "height": 256} for i in range(2)],
           "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(ann))
    return ["data=coco", f"data.train_ann={root / 'ann.json'}", f"data.train_images={root}", "splits=[train]",
            "data.image_size=256", "data.num_workers=0"]


def test_data_check_scale_fit_names_the_fix(tmp_path):
    args = fixture(tmp_path)
    # the 200 px boxes: max(l, t, r, b) >= 100 at every point, so only P6 [96, 128] and P7 [128, 160] could take
    # them; their nearest points sit 32 / 64 px off the centre: 132 and 164 px, past both caps
    ranges = "loss.assigner.size_ranges=[[0,32],[32,64],[64,96],[96,128],[128,160]]"
    proc = detcli("data", "check", *args, ranges, "head=fcos", f"hydra.run.dir={tmp_path}/fcos")
    fit = json.loads((tmp_path / "fcos" / "data_check.json").read_text())["scale_fit"]
    assert fit["all"]["ceiling"] == 0.5 and fit["all"]["boxes"] == 4
    assert fit["all"]["large"] == 0.0 and fit["all"]["small"] == 1.0
    assert fit["per_class"]["thing"]["ceiling"] == 0.5
    best = fit["best_change"]
    assert best["ceiling"] == 1.0 and best["change"] in {"data.image_size=128", ranges.replace(
        "[[0,32],[32,64],[64,96],[96,128],[128,160]]", "[[0,64],[64,128],[128,192],[192,256],[256,320]]")}
    assert "the change that raises it most" in proc.stdout and best["change"] in proc.stdout
    assert (tmp_path / "fcos" / "box_stats_train.png").stat().st_size > 10_000
    # yolox: every box has points near its centre. faster_rcnn, IoU >= 0.7 with an anchor: a 200 px box sits
    # between the 128 and 256 px anchors (IoU at most 200^2 / 256^2 = 0.61), a 24 px square under a 32 px one
    # (0.56); the 24 x 30 box fits inside the 32 px anchor centred at (40, 44): 720 / 1024 = 0.70
    for head, ceiling, name in (("yolox", 1.0, "YOLOX"), ("faster_rcnn", 0.25, "FasterRCNN")):
        proc = detcli("data", "check", *args, f"head={head}", "plots=false", f"hydra.run.dir={tmp_path}/{head}")
        fit = json.loads((tmp_path / head / "data_check.json").read_text())["scale_fit"]
        assert "recall ceiling" in proc.stdout and fit["all"]["ceiling"] == ceiling
        assert fit["detector"].startswith(f"head {name}")


def test_a_detector_that_cannot_be_built_skips_the_scale_fit_only(tmp_path):
    args = fixture(tmp_path)
    proc = detcli("data", "check", *args, "loss.assigner.size_ranges=[[0,64]]", "plots=false",
                  f"hydra.run.dir={tmp_path}/run")
    assert "scale fit: skipped" in proc.stdout and "size_ranges has 1 ranges" in proc.stdout
    report = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert "scale_fit" not in report and report["summary"]["train"]["boxes"] == 4
