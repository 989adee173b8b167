"""Augmentation: mosaic / mixup keep boxes on their objects and their size, close_mosaic, pipelines from
config."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import detcli
from PIL import Image

from detcli.data.coco import CocoData
from detcli.data.transforms import HSVJitter, mosaic


def squares(tmp_path, n=6):
    """Grey images with one white square each; the box is the square."""
    images, anns = [], []
    for i in range(n):
        arr = np.full((60, 80, 3), 90, dtype=np.uint8)
        x, y, s = 5 + 7 * i, 6 + 3 * i, 20 + 2 * i
        arr[y : y + s, x : x + s] = 255
        Image.fromarray(arr).save(tmp_path / f"s{i}.png")
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": 80, "height": 60})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, s, s], "area": s * s})
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "square"}]}))
    return CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path), image_size=64, hflip=0.0,
                    num_workers=0, mosaic=1.0)


def test_mosaic_boxes_sit_on_their_objects(tmp_path):
    ds = squares(tmp_path).dataset("train")
    seen = 0
    for seed in range(8):
        image, target, _ = ds[(seed % len(ds), 1000 + seed)]
        assert image.shape[-2:] == (64, 64)  # the window around the mosaic, at the training size
        boxes = target["boxes"].as_subclass(torch.Tensor)
        for x1, y1, x2, y2 in boxes.tolist():
            assert 0 <= x1 < x2 <= image.shape[-1] and 0 <= y1 < y2 <= image.shape[-2]
            if (x2 - x1) * (y2 - y1) >= 16:
                cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                assert image[:, cy, cx].min() > 180, (seed, (x1, y1, x2, y2), image[:, cy, cx])
                seen += 1
    assert seen >= 8
    again = ds[(0, 1000)]
    torch.testing.assert_close(again[0], ds[(0, 1000)][0])  # the sample seed fixes the mosaic


def test_mosaic_objects_keep_their_size_at_side_and_g_fixes_it():
    """A 40 px square of a 128 x 80 image is 20 px at side 64; the window scales it by the drawn factor
    in [0.5, 1.5] (YOLOX), not by a further 1/2 as a whole-canvas resize would."""
    image = torch.full((3, 80, 128), 90, dtype=torch.uint8)
    image[:, 20:60, 30:70] = 255
    sample = (image, torch.tensor([[30.0, 20.0, 70.0, 60.0]]), torch.tensor([0]))
    sides = []
    for seed in range(6):
        torch.manual_seed(seed)  # the global RNG plays no part
        out, boxes, _ = mosaic([sample] * 4, 64, torch.Generator().manual_seed(seed))
        again = mosaic([sample] * 4, 64, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 64, 64) and torch.equal(out, again[0]) and torch.equal(boxes, again[1])
        g = torch.Generator().manual_seed(seed)
        torch.rand(2, generator=g)  # the mosaic centre
        scale = 0.5 + float(torch.rand((), generator=g))
        for x1, y1, x2, y2 in boxes.tolist():
            if 0 < x1 and x2 < 64 and 0 < y1 and y2 < 64 and abs((x2 - x1) - (y2 - y1)) < 1e-3:  # not cut
                assert x2 - x1 == pytest.approx(20 * scale, rel=0.02)  # the factor rounded to whole canvas pixels
                sides.append(x2 - x1)
    assert sides, "some squares lie inside the window"


def test_close_mosaic_turns_it_off_for_the_last_epochs(tmp_path):
    data = squares(tmp_path)
    data.augment["close_mosaic"] = 2
    ds = data.dataset("train")
    ds.set_epoch(7, 10)
    assert ds.mosaic_on
    ds.set_epoch(8, 10)
    assert not ds.mosaic_on
    image, _, _ = ds[(0, 5)]
    assert image.shape[-2:] == (48, 64)  # the plain keep-ratio resize of an 80 x 60 image
    assert ds.final_phase
    # a fraction of the run's epochs, rounded up: 0.1 of 75 epochs -> the last 8 (67..74)
    ds.close_mosaic = 0.1
    ds.set_epoch(66, 75)
    assert ds.mosaic_on and not ds.final_phase
    ds.set_epoch(67, 75)
    assert not ds.mosaic_on and ds.final_phase


def test_mixup_min_epochs_keeps_mixup_to_long_runs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data = squares(tmp_path)
    data.augment.update(mixup=1.0, mixup_min_epochs=100)
    ds = data.dataset("train")
    ds.set_epoch(0, 12)  # a time-limited run before its steps are measured: the configured length
    assert not ds.mixup_on and ds.mosaic_on
    short = ds[(0, 5)]
    ds.set_epoch(1, 330)
    assert ds.mixup_on and "data.mixup on from epoch 1" in caplog.text
    mixed = ds[(0, 5)]
    assert len(mixed[1]["labels"]) > len(short[1]["labels"])  # the second mosaic's squares join the first's
    data.augment.update(mixup=0.0, mixup_min_epochs=0)
    plain = data.dataset("train")
    plain.set_epoch(0, 12)
    assert torch.equal(plain[(0, 5)][0], short[0])  # mixup off draws as mixup=0 does: the same samples


def test_hsv_jitter_changes_colour_not_boxes_and_the_sample_seed_fixes_it(tmp_path):
    data = squares(tmp_path)
    data.augment["mosaic"] = 0.0
    plain = data.dataset("train")[(0, 5)]
    data.hsv = [0.015, 0.7, 0.4]
    ds = data.dataset("train")
    a, b, c = ds[(0, 5)], ds[(0, 5)], ds[(0, 6)]
    assert torch.equal(a[0], b[0])  # the same sample seed draws the same gains
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], plain[0])
    assert torch.equal(a[1]["boxes"], plain[1]["boxes"])  # colour only: the boxes stay
    # grey stays grey under a hue shift and a saturation gain: only the value gain moves it
    grey = a[0][:, 0, 0]
    assert grey[0] == grey[1] == grey[2]
    with pytest.raises(Exception, match="data.hsv"):
        CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path), hsv=[0.7, 0.5, 0.5])


def test_hsv_matrix_is_torchvisions_value_and_saturation_gains():
    """The one colour matrix against torchvision's adjust_brightness then adjust_saturation on pixels none of
    them clips (the matrix clamps once, at the end); a quarter turn of hue maps a pure red into the red-green
    quadrant (r = g) keeping r + g + b."""
    from torchvision.transforms.v2 import functional as F

    image = torch.randint(60, 160, (3, 16, 16), dtype=torch.uint8)
    jitter = HSVJitter(0.0, 0.5, 0.5)
    ours = jitter.transform(image, {"value": 1.2, "saturation": 0.7, "angle": 0.0})
    theirs = F.adjust_saturation(F.adjust_brightness(image, 1.2), 0.7)
    assert (ours.int() - theirs.int()).abs().max() <= 2  # torchvision rounds to uint8 after each gain and its grey
    red = torch.zeros(3, 1, 1)
    red[0] = 90.0
    turned = jitter.transform(red, {"value": 1.0, "saturation": 1.0, "angle": math.pi / 3})  # (3, 1, 1)
    r, g, b = turned.flatten().tolist()
    assert r == pytest.approx(60.0, abs=1e-4) and g == pytest.approx(60.0, abs=1e-4)  # 60 degrees: red turns to yellow
    assert b == pytest.approx(-30.0, abs=1e-4)  # (1 - cos) / 3 - sin / sqrt(3) = -1/3 of red; uint8 images clamp it
    assert turned.sum() == pytest.approx(90.0, abs=1e-4)  # a rotation about the grey axis keeps r + g + b


def test_decoded_cache_gives_the_same_samples(tmp_path):
    data = squares(tmp_path)
    data.augment["mosaic"] = 0.0
    plain = data.dataset("train")
    data.cache = "decoded"
    cached = data.dataset("train")
    assert cached.decoded[0].shape == (3, 48, 64)  # stored at the training size: 80 x 60 -> 64 x 48
    for key in [(0, 5), (3, 9)]:
        a, b = plain[key], cached[key]
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1]["boxes"], b[1]["boxes"])
    data.augment["mosaic"] = 1.0  # a mosaic of decoded images keeps the boxes on their squares
    image, target, _ = data.dataset("train")[(0, 3)]
    for box in target["boxes"].round().long().tolist():
        x1, y1, x2, y2 = box
        if x2 - x1 > 4 and y2 - y1 > 4:
            assert image[:, (y1 + y2) // 2, (x1 + x2) // 2].float().mean() > 200
    both = CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path), val_ann=str(tmp_path / "ann.json"),
                    val_images=str(tmp_path), image_size=64, num_workers=0, cache="decoded")
    val = both.dataset("val")  # evaluation keeps the files' bytes and reads images at their own size
    assert val.decoded is None and val.cache is not None and val[0][0].shape[-2:] == (48, 64)
    with pytest.raises(Exception, match="data.cache must be"):
        CocoData(train_ann=str(tmp_path / "ann.json"), train_images=str(tmp_path), cache="ram")


def test_pipeline_from_config_letterbox_mosaic_mixup_cache_train(tmp_path, cache_dir):
    pipeline = ("[{_target_:torchvision.transforms.v2.RandomPhotometricDistort},"
                "{_target_:torchvision.transforms.v2.RandomIoUCrop},"
                "{_target_:torchvision.transforms.v2.RandomShortestSize,min_size:[48,64],max_size:64}]")
    detcli("train", "experiment=toy", "data.num_train=32", "data.num_val=8", "data.canvas=64", "data.image_size=64",
           "data.num_workers=0", "data.batch_size=4", f"data.train_transforms={pipeline}", "data.letterbox=true",
           "data.mosaic=1.0", "data.mixup=0.5", "data.close_mosaic=1", "data.cache=true", "trainer.max_steps=3",
           f"hydra.run.dir={tmp_path}/run")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_data_show_includes_mosaic(tmp_path, cache_dir):
    out = tmp_path / "grid.png"
    detcli("data", "show", "data.num_train=32", "data.num_val=8", "data.mosaic=1.0", "n=4", f"output={out}",
           f"hydra.run.dir={tmp_path}/run")
    assert Image.open(out).size[0] > 128
