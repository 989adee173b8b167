"""Non-square images: content size, scale and padding through dataset -> collate -> to_original, and
evaluation of ground truth as predictions, for the letterbox and the keep-ratio resize."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from detcli.data.coco import CocoData
from detcli.data.collate import collate, pad_value
from detcli.data.transforms import PAD_VALUE, resized_size
from detcli.evaluation.evaluator import evaluate, to_original
from detcli.ops.boxes import clip_boxes

# (height, width) of the images, and their boxes x1, y1, x2, y2: the full image, and off-grid ones
SHAPES = [(100, 200), (200, 100), (90, 250)]


def boxes_of(h: int, w: int) -> list[list[float]]:
    return [[0, 0, w, h], [3.5, 7.25, w / 2 + 1.5, h - 10.5], [w - 31.0, 2.0, w - 1.0, 23.0]]


def nonsquare_coco(tmp_path, **kwargs) -> CocoData:
    """A COCO val set of non-square images (one colour each) in tmp_path."""
    images, anns = [], []
    for i, (h, w) in enumerate(SHAPES):
        Image.fromarray(np.full((h, w, 3), 40 * i + 30, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "width": w, "height": h})
        for j, (x1, y1, x2, y2) in enumerate(boxes_of(h, w)):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 1 + j % 2,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    (tmp_path / "val.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return CocoData(val_ann=str(tmp_path / "val.json"), val_images=str(tmp_path), num_workers=0,
                    batch_size=len(SHAPES), **kwargs)


SETTINGS = [(128, False), (128, True), ((50, 90), False)]


@pytest.mark.parametrize(("image_size", "letterbox"), SETTINGS)
def test_boxes_round_trip_to_original_pixels(tmp_path, image_size, letterbox):
    data = nonsquare_coco(tmp_path, image_size=image_size, letterbox=letterbox)
    batch = next(iter(data.val_loader(data.dataset("val"))))
    expected = [resized_size(h, w, image_size) for h, w in SHAPES]
    assert batch["image_sizes"].tolist() == [list(s) for s in expected]  # the content, not the padding
    assert batch["orig_sizes"].tolist() == [list(s) for s in SHAPES]
    if letterbox:
        assert batch["images"].shape[-2:] == (128, 128)
    dets = {"boxes": batch["boxes"], "scores": torch.ones(batch["labels"].shape), "labels": batch["labels"]}
    for out, meta in zip(to_original(dets, batch), batch["meta"]):
        torch.testing.assert_close(out["boxes"], meta["gt"]["boxes"], atol=1e-3, rtol=0)


def test_padding_is_the_mean_so_it_normalises_to_zero(tmp_path):
    data = nonsquare_coco(tmp_path, image_size=128, letterbox=True)
    samples = [data.dataset("val")[i] for i in range(2)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255  # a Detector's pixel_mean
    batch = collate(samples, 32, pad_value(mean), canvas=(128, 128))
    assert pad_value(mean) == PAD_VALUE == (124, 116, 104)
    below = batch["images"][0, :, 64:, :].float()  # image 0 is 64 x 128: the rest is padding
    assert ((below - mean[0]).abs() <= 0.5).all()
    right = batch["images"][1, :, :, 64:].float()  # image 1 is 128 x 64
    assert ((right - mean[0]).abs() <= 0.5).all()


def test_predictions_are_clipped_to_the_original_image(tmp_path):
    data = nonsquare_coco(tmp_path, image_size=128, letterbox=True)
    batch = collate([data.dataset("val")[0]], 32, canvas=(128, 128))  # 100 x 200 -> 64 x 128 content
    dets = {"boxes": torch.tensor([[[-5.0, 10.0, 140.0, 120.0]]]), "scores": torch.ones(1, 1),
            "labels": torch.zeros(1, 1, dtype=torch.long)}
    torch.testing.assert_close(to_original(dets, batch)[0]["boxes"], torch.tensor([[0.0, 15.625, 200.0, 100.0]]))


@pytest.mark.parametrize("size", [128, 97, (50, 90), (800, 1333), (64, 64)])
def test_resized_size_is_torchvision_resize(size):
    for h, w in [(100, 200), (200, 100), (90, 250), (333, 331), (64, 64), (7, 500)]:
        image = torch.zeros(1, h, w)
        short, long = (size, None) if isinstance(size, int) else size
        resize = (v2.Resize(size=None, max_size=size) if isinstance(size, int)
                  else v2.Resize(size=short, max_size=long) if long > short else None)
        if resize is None:
            continue
        assert resized_size(h, w, size) == tuple(resize(image).shape[-2:]), (h, w, size)


class GroundTruth(nn.Module):
    """A 'detector' that returns each batch's ground truth (in resized pixels, clipped to the content
    like the real postprocess) as its detections, reading the same loader in step with evaluate."""

    def __init__(self, loader):
        super().__init__()
        self.batches = iter(loader)

    def forward(self, images, image_sizes):
        batch = next(self.batches)
        return {"boxes": clip_boxes(batch["boxes"], image_sizes), "labels": batch["labels"],
                "scores": (batch["labels"] >= 0).float()}


@pytest.mark.parametrize(("image_size", "letterbox"), SETTINGS)
def test_ground_truth_as_predictions_scores_map_one(tmp_path, image_size, letterbox):
    data = nonsquare_coco(tmp_path, image_size=image_size, letterbox=letterbox, val_batch_size=2)
    loader = data.val_loader(data.dataset("val"))
    metrics = evaluate(GroundTruth(loader), loader, torch.device("cpu"))
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_75"] == pytest.approx(1.0)


def test_multiscale_batches_keep_boxes_sizes_and_padding_exact(tmp_path):
    """data.multiscale: each training batch takes one side from the range (seeded by its first sample, so a
    replay gets the same), and boxes, content sizes and scales follow the resize exactly."""
    from detcli.data.collate import Collate

    data = nonsquare_coco(tmp_path, train_ann=str(tmp_path / "val.json"), train_images=str(tmp_path),
                          image_size=128, letterbox=True, hflip=0.0, multiscale=[64, 192])
    ds = data.dataset("train")
    plain = Collate(32, PAD_VALUE, (128, 128))
    multi = Collate(32, PAD_VALUE, (128, 128), multiscale=(64, 192, 128))
    sides = set()
    for seed in range(12):
        samples = [ds[(i, seed * 10 + i)] for i in range(len(SHAPES))]
        ref, got = plain(samples), multi(samples)
        assert got["images"].dtype == torch.uint8
        side = got["images"].shape[-1]
        sides.add(side)
        assert got["images"].shape[-2:] == (side, side) and side in (64, 96, 128, 160, 192)
        f = side / 128
        assert torch.allclose(got["boxes"], ref["boxes"] * f)
        assert torch.equal(got["image_sizes"], (ref["image_sizes"] * f).round().long())
        assert torch.allclose(got["scale"], ref["scale"] * f)
        h, w = got["image_sizes"][0].tolist()  # the padding keeps the pad value
        assert (got["images"][0, :, :, w:] == torch.tensor(PAD_VALUE, dtype=torch.uint8).view(3, 1, 1)).all()
        assert (got["images"][0, :, h:] == torch.tensor(PAD_VALUE, dtype=torch.uint8).view(3, 1, 1)).all()
        assert torch.equal(multi(samples)["images"], got["images"])  # the same batch draws the same side
    assert len(sides) >= 3
    with pytest.raises(Exception, match="data.multiscale"):
        nonsquare_coco(tmp_path, multiscale=[200, 100])
