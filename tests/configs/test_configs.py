"""Every config option composes, and the model-building ones instantiate."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detcli.build import build_model
from detcli.config import config_dir

CONFIGS = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_groups_have_the_promised_options():
    assert {"resnet18", "resnet50", "convnext_tiny", "efficientnet_b0"} <= set(options("backbone"))
    assert {"fpn"} <= set(options("neck")) and {"fcos"} <= set(options("head")) and {"fcos"} <= set(options("loss"))
    assert {"toy", "coco"} <= set(options("data"))
    assert {"default", "cpu", "gpu", "smoke"} <= set(options("trainer"))
    assert {"toy", "coco_fcos_r50_1x", "yolox_s", "yolox_m", "yolox_nano", "yolox_tiny", "fcos_lite",
            "faster_rcnn_400", "coco_faster_rcnn_r50_1x", "yolox_r18"} <= set(options("experiment"))
    assert {"fcos", "yolox", "faster_rcnn"} <= set(options("head")) and {"faster_rcnn"} <= set(options("loss"))


def test_every_default_key_is_commented():
    """Each `key: value` line of a base config (not a variant that only changes a few keys of another
    option, not an experiment) carries a `# (type) meaning` comment; the `hydra:` block is Hydra's."""
    missing = []
    for path in CONFIGS.rglob("*.yaml"):
        text = path.read_text()
        variant = re.search(r"defaults:\n(  - \w+\n)*  - (default|timm|coco)\n", text)
        if {"experiment", "help"} & set(path.relative_to(CONFIGS).parts[:-1]) or variant:
            continue
        in_hydra = False
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            in_hydra = (in_hydra and line.startswith(" ")) or line.startswith("hydra:")
            if in_hydra or not s or s.startswith(("#", "-", "_", "defaults")) or s.endswith(":") or "#" in line:
                continue
            missing.append(f"{path.relative_to(CONFIGS)}:{n}: {s}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


@pytest.mark.parametrize("backbone", [b for b in options("backbone") if b != "timm"])  # timm.yaml: the base
def test_backbones_build_a_detector(backbone, cache_dir):
    cfg = compose_train(f"backbone={backbone}")
    model = build_model(cfg, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out["boxes"].shape == (1, cfg.postprocess.max_det, 4)


@pytest.mark.parametrize("group", ["neck", "head", "loss", "trainer", "data", "experiment"])
def test_every_option_composes(group):
    for option in options(group):
        cfg = compose_train(f"{group}={option}")
        OmegaConf.to_container(cfg.trainer, resolve=True)
        assert cfg.head._target_ and cfg.neck._target_ and cfg.loss._target_


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_instantiate_their_model_and_data(experiment, cache_dir):
    toy = compose_train(f"experiment={experiment}").data._target_.endswith("ToyData")
    small = ["data.num_train=8", "data.num_val=4"] if toy else []  # the small presets train on any data: toy here
    cfg = compose_train(f"experiment={experiment}", "backbone.pretrained=false", *small)
    build_model(cfg, num_classes=5)
    data = instantiate(cfg.data)
    if toy:
        assert data.num_classes == 3 and len(data.dataset("train")) == 8
    instantiate(cfg.trainer.optimizer)


def test_head_brings_its_neck_and_loss_and_r50_composes():
    cfg = compose_train("head=fcos", "backbone=resnet50")
    assert cfg.neck._target_.endswith("FPN") and cfg.loss._target_.endswith("FCOSCriterion")
    assert cfg.backbone.name == "resnet50" and cfg.data._target_.endswith("ToyData")


@pytest.mark.parametrize("head", options("head"))
def test_every_head_builds_trains_and_detects(head, cache_dir):
    """Each head with its defaults: a training step gives finite named losses (also on an image without
    boxes), eval gives the fixed-shape detections."""
    cfg = compose_train(f"head={head}", "backbone=resnet10t")
    model = build_model(cfg, num_classes=3)
    images = torch.rand(2, 3, 128, 160) * 255
    targets = {"boxes": torch.tensor([[[10.0, 20, 60, 90]], [[0, 0, 0, 0]]]), "labels": torch.tensor([[1], [-1]])}
    torch.manual_seed(0)
    losses = model.train()(images, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.set_grad_checkpointing(True)  # the same losses and gradients, recomputed in backward
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    torch.manual_seed(0)
    again = model(images, targets)
    sum(again.values()).backward()
    for name in losses:
        torch.testing.assert_close(again[name], losses[name])
    for a, b in zip(grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.set_grad_checkpointing(False)
    with torch.no_grad():
        out = model.eval()(images, image_sizes=torch.tensor([[128, 160], [100, 120]]))
    assert out["boxes"].shape == (2, cfg.postprocess.max_det, 4) and out["labels"].shape == (2, cfg.postprocess.max_det)


def test_faster_rcnn_brings_its_pyramid_over_any_backbone():
    cfg = compose_train("head=faster_rcnn", "backbone=resnet50")
    assert cfg.neck._target_.endswith("FPN") and cfg.loss._target_.endswith("FasterRCNNCriterion")
    assert list(cfg.backbone.strides) == [4, 8, 16, 32] and cfg.neck.extra_from == "maxpool"
    model = build_model(cfg, num_classes=3)
    assert model.neck.strides == [4, 8, 16, 32, 64] and model.head.roi_levels == [0, 1, 2, 3]


def test_coco_faster_rcnn_recipe_is_detectron2s_1x():
    cfg = compose_train("experiment=coco_faster_rcnn_r50_1x")
    assert cfg.trainer.max_steps == 90000 and cfg.data.batch_size == 16 and cfg.trainer.optimizer.lr == 0.02
    from detcli.engine.schedule import milestone_steps

    assert milestone_steps(cfg.trainer.scheduler.milestones, 90000, 7330) == [60000, 80000]
    assert list(cfg.data.image_size) == [800, 1333] and cfg.backbone.freeze_at == 2


def test_coco_recipe_is_the_paper_recipe():
    cfg = compose_train("experiment=coco_fcos_r50_1x")
    assert cfg.trainer.epochs == 12 and cfg.data.batch_size == 16 and cfg.trainer.optimizer.lr == 0.01
    assert list(cfg.trainer.scheduler.milestones) == [8, 11] and list(cfg.data.image_size) == [800, 1333]
    assert cfg.backbone.pretrained is True and cfg.trainer.optimizer._target_ == "torch.optim.SGD"


@pytest.mark.parametrize("cmd", ["eval", "predict", "export", "bench"])
def test_other_commands_compose(cmd):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(cmd, overrides=["checkpoint=x.pt"] + (["source=y"] if cmd == "predict" else []))
    assert cfg.checkpoint == "x.pt"
