"""Sliced inference (detcli/evaluation/sliced.py): each window's detections come back shifted into the image and
merged class by class; through the CLI a tile covering the whole image scores the plain evaluation's mAP, and
predict.tile runs with the PyTorch model and with an exported graph."""

import json

import pytest
import torch
from conftest import TOY_THRESH, detcli

from detcli.data.tiles import Tiling
from detcli.evaluation.sliced import Slicing, merge, sliced_detections


def test_window_detections_are_shifted_into_the_image_and_merged():
    """A stub detector finds one box at the same place in every window: 4 windows of a 200 x 120 image."""
    calls = []

    def detect(batch):
        calls.append(batch["images"].shape)
        return [{"boxes": torch.tensor([[10.0, 10, 30, 30]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in batch["meta"]]

    image = torch.zeros(3, 120, 200, dtype=torch.uint8)
    slicing = Slicing(Tiling(100, 0.0), full=False, batch=3)
    out = sliced_detections(detect, image, slicing, None, num_classes=2, max_det=10)
    assert sorted(out["boxes"].tolist()) == [[10, 10, 30, 30], [10, 30, 30, 50], [110, 10, 130, 30], [110, 30, 130, 50]]
    assert [c[0] for c in calls] == [3, 1]  # windows batched by `batch`


def test_merge_keeps_the_best_of_overlapping_boxes_per_class():
    parts = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.tensor([0, 1])},
             {"boxes": torch.tensor([[0.0, 0, 10, 11]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}]
    out = merge(parts, Slicing(Tiling(64), iou=0.5), num_classes=2, max_det=10)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8]) and out["labels"].tolist() == [0, 1]
    voted = merge(parts, Slicing(Tiling(64), merge="vote", iou=0.5), num_classes=2, max_det=10)
    assert voted["boxes"][0, 3] > 10  # moved towards the 0.7 box


def test_a_tile_covering_the_image_scores_the_plain_map(toy_run, tmp_path):
    ckpt = toy_run("fcos") / "checkpoints" / "last.pt"
    common = [f"checkpoint={ckpt}", "precision=fp32", "worst=0", "plots=false"]
    detcli("eval", *common, f"hydra.run.dir={tmp_path / 'plain'}")
    detcli("eval", *common, "eval.tile={size:128,full:false}", f"hydra.run.dir={tmp_path / 'tiled'}")
    plain, tiled = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("plain", "tiled"))
    assert tiled["map"] == plain["map"] and tiled["map_50"] == plain["map_50"]
    dets = [sorted((d["image_id"], d["category_id"], d["score"], *d["bbox"]) for d in
                   json.loads((tmp_path / r / "detections.json").read_text())) for r in ("plain", "tiled")]
    assert len(dets[0]) > 100 and len(dets[0]) == len(dets[1])  # the same detections
    assert torch.tensor(dets[0]).sub(torch.tensor(dets[1])).abs().max() < 1e-4


def test_predict_tiles_with_an_exported_graph(toy_run, tmp_path, cache_dir):
    run = toy_run("fcos")
    images = next(p for p in cache_dir.glob("toy_v2_seed0_n32_128*") if p.is_dir()) / "val"
    detcli("export", f"checkpoint={run / 'checkpoints' / 'last.pt'}", "export.dynamic=true", f"hydra.run.dir={tmp_path / 'ex'}")
    detcli("predict", "predict.backend=onnx", f"predict.onnx={tmp_path / 'ex' / 'model.onnx'}", f"source={images}",
           "predict.tile={size:64,overlap:0.25}", f"predict.score_thresh={TOY_THRESH}", "save_images=false",
           f"hydra.run.dir={tmp_path / 'pr'}")
    predictions = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert predictions and all(0 <= p["bbox"][0] <= 128 for p in predictions)
