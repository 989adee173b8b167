"""The small presets (experiment=yolox_cpu, yolox_nano, yolox_tiny, yolox_r18, fcos_lite): the published multipliers, and each
one trains on the toy set and evaluates through the CLI."""

import json

import pytest
from conftest import detcli
from test_configs import compose_train

from detcli.build import build_model

SMALL = ["data.num_train=32", "data.num_val=8", "data.batch_size=4", "data.num_workers=0", "data.image_size=64"]


def test_yolox_multipliers_and_sizes():
    tiny, nano = compose_train("experiment=yolox_tiny"), compose_train("experiment=yolox_nano")
    assert (tiny.neck.width, tiny.neck.depth, tiny.neck.depthwise) == (0.375, 0.33, False)
    assert (nano.neck.width, nano.neck.depth, nano.neck.depthwise, nano.head.depthwise) == (0.25, 0.33, True, True)
    assert tiny.data.image_size == nano.data.image_size == 416 and tiny.data.letterbox
    assert (tiny.data.mosaic, nano.data.mosaic, tiny.data.mixup) == (1.0, 0.5, 0.0)
    r18 = compose_train("experiment=yolox_r18")
    assert (r18.data.mosaic, r18.data.mixup, r18.data.close_mosaic) == (1.0, 1.0, 0.1)  # YOLOX-s's augmentation
    cpu = compose_train("experiment=yolox_cpu")  # nano's widths and backbone, dense convs, tiny's recipe
    assert (cpu.neck.width, cpu.neck.depth, cpu.neck.depthwise, cpu.head.depthwise) == (0.25, 0.33, False, False)
    assert cpu.backbone.model_kwargs == nano.backbone.model_kwargs
    assert (cpu.data.mixup, cpu.data.mixup_min_epochs) == (1.0, 100)  # mixup in long runs only
    assert {**cpu.data, "mixup": 0.0, "mixup_min_epochs": 0} == {**tiny.data}
    sizes = {name: sum(p.numel() for p in build_model(compose_train(f"experiment={name}"), 80).parameters())
             for name in ("yolox_cpu", "yolox_nano", "yolox_tiny", "yolox_s", "fcos_lite")}
    # YOLOX's published sizes at 80 classes: nano 0.91M, tiny 5.06M, s 9.0M (timm's CSP-Darknet has no SPP
    # block and a full-conv nano backbone: close, not equal)
    assert 0.8e6 < sizes["yolox_nano"] < 1.5e6 and 3.5e6 < sizes["yolox_tiny"] < 5.5e6
    assert sizes["yolox_tiny"] < sizes["yolox_s"] and sizes["fcos_lite"] < 5e6
    assert sizes["yolox_nano"] < sizes["yolox_cpu"] < sizes["yolox_tiny"]


@pytest.mark.parametrize("preset", ["yolox_cpu", "yolox_tiny", "yolox_r18", "fcos_lite"])  # yolox_nano: yolox_cpu with depthwise convs (built above)
def test_preset_trains_on_the_toy_set_and_evaluates(preset, tmp_path, cache_dir):
    detcli("train", f"experiment={preset}", *SMALL, "trainer.max_steps=2", "trainer.log_interval=1",
           f"hydra.run.dir={tmp_path}/train")
    assert f"experiment: {preset}" in (tmp_path / "train" / ".hydra" / "overrides.yaml").read_text().replace("=", ": ")
    detcli("eval", f"checkpoint={tmp_path}/train/checkpoints/best.pt", f"hydra.run.dir={tmp_path}/eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 <= metrics["map"] <= 1
