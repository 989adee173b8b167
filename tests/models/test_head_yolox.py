"""The YOLOX head and its configs: shapes over several backbones and both necks, bias init, grad
checkpointing, the head's defaults and the published recipes (the overfit check is in test_overfit.py)."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from detcli.build import build_model
from detcli.config import config_dir
from detcli.errors import ConfigError
from detcli.models.heads.yolox import YOLOXHead


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", list(overrides))


@pytest.mark.parametrize(("backbone", "neck"), [("resnet18", "pafpn"), ("cs3darknet_s", "pafpn"),
                                                ("convnext_tiny", "pafpn"), ("resnet18", "fpn")])
def test_yolox_outputs_over_backbones_and_necks(backbone, neck):
    cfg = compose_train("head=yolox", f"backbone={backbone}", f"neck={neck}")
    model = build_model(cfg, num_classes=4)
    x = torch.rand(2, 3, 96, 128) * 255
    feats = model.features(x)
    preds = model.head(feats)
    sizes = [f.shape[-2:] for f in feats]
    R = sum(h * w for h, w in sizes)
    assert [f.shape[-1] for f in feats] == [128 // s for s in model.neck.strides]
    assert preds["cls_logits"].shape == (2, R, 4) and preds["box_offsets"].shape == (2, R, 4)
    assert preds["objectness"].shape == (2, R) and preds["points"].shape == (R, 2)
    assert preds["level_sizes"] == [h * w for h, w in sizes]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out["boxes"].shape == (2, 100, 4) and out["labels"].shape == (2, 100)


def test_stems_take_per_level_channels_and_biases_start_at_the_prior():
    head = YOLOXHead([64, 128, 256], [8, 16, 32], num_classes=3)
    assert [s[0].in_channels for s in head.stems] == [64, 128, 256]
    assert all(s[0].out_channels == 64 for s in head.stems)  # channels: null -> the smallest level width
    prior = -math.log(99.0)
    assert all(torch.allclose(p.bias, torch.full_like(p.bias, prior)) for p in (*head.cls_preds, *head.obj_preds))
    feats = [torch.randn(1, c, 32 // (2**i), 32 // (2**i)) for i, c in enumerate([64, 128, 256])]
    assert YOLOXHead([64, 128, 256], [8, 16, 32], 3, channels=32, depthwise=True)(feats)["cls_logits"].shape == (
        1, 32 * 32 + 16 * 16 + 8 * 8, 3)


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    head = YOLOXHead(32, [8, 16], num_classes=2).train()
    feats = [torch.randn(2, 32, 8, 8, requires_grad=True), torch.randn(2, 32, 4, 4, requires_grad=True)]
    outs = []
    for enable in (False, True):
        head.set_grad_checkpointing(enable)
        head.zero_grad()
        preds = head(feats)
        loss = preds["cls_logits"].square().sum() + preds["box_offsets"].sum() + preds["objectness"].sum()
        loss.backward()
        outs.append((loss.detach(), [p.grad.clone() for p in head.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs[0][1], outs[1][1]))


def test_head_brings_pafpn_and_the_yolox_loss_and_postprocess():
    cfg = compose_train("head=yolox")
    assert cfg.neck._target_.endswith("PAFPN") and cfg.loss._target_.endswith("YOLOXCriterion")
    assert cfg.loss.assigner._target_.endswith("SimOTAAssigner")
    assert cfg.postprocess._target_.endswith("YOLOXPostprocess")
    assert compose_train("head=yolox", "neck=fpn").neck._target_.endswith(".FPN")


def test_fcos_on_pafpn_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="shares its towers across levels"):
        build_model(compose_train("neck=pafpn"), num_classes=3)


def test_yolox_s_recipe_is_the_published_one():
    cfg = compose_train("experiment=yolox_s")
    t = cfg.trainer
    assert cfg.backbone.name == "cs3darknet_s" and (cfg.neck.width, cfg.neck.depth) == (0.5, 0.33)
    assert t.optimizer.nesterov and t.optimizer.momentum == 0.9 and t.optimizer.weight_decay == 5e-4
    assert t.optimizer.lr == 0.01 and t.base_batch_size == 64 and t.scale_lr  # 0.01 x batch / 64
    assert t.scheduler.name == "cosine" and t.scheduler.warmup_epochs == 5 and t.scheduler.min_lr_ratio == 0.05
    assert t.ema.decay == 0.9998 and t.epochs == 300
    d = cfg.data
    assert d.mosaic == 1.0 and d.mixup == 1.0 and d.close_mosaic == 15 and list(d.multiscale) == [448, 832]
    assert d.image_size == 640 and d.letterbox and cfg.loss.use_l1 == "auto"
    m = compose_train("experiment=yolox_m")
    assert m.backbone.name == "cs3darknet_m" and (m.neck.width, m.neck.depth) == (0.75, 0.67)
    assert m.trainer.optimizer.nesterov and m.data.close_mosaic == 15



def test_yolox_brings_its_sgd_lr_only_with_sgd_and_overrides_win():
    assert compose_train().trainer.optimizer.lr == 0.004  # FCOS keeps the trainer's default
    assert compose_train("head=yolox").trainer.optimizer.lr == 0.04  # trainer/optimizer/sgd/yolox.yaml
    assert compose_train("head=yolox", "trainer/optimizer=adamw").trainer.optimizer.lr == 1e-3
    assert compose_train("head=yolox", "trainer.optimizer.lr=0.005").trainer.optimizer.lr == 0.005
    assert compose_train("experiment=yolox_s").trainer.optimizer.lr == 0.01  # a preset states its own


def test_yolox_brings_mosaic_over_any_data_and_overrides_win():
    for data in ("toy", "coco", "voc", "yolo"):
        d = compose_train("head=yolox", f"data={data}").data
        assert d.mosaic == 1.0 and d.close_mosaic == 0.1, data  # head/yolox.yaml data:
        assert list(d.hsv) == [0.015, 0.7, 0.4], data
    assert compose_train().data.mosaic == 0.0  # FCOS: the data config's own
    assert compose_train().data.hsv is None
    assert compose_train("head=yolox", "data.mosaic=0").data.mosaic == 0
    toy = compose_train("experiment=toy", "head=yolox").data  # experiment/toy.yaml: no mosaic, whatever the head
    assert toy.mosaic == 0.0 and toy.close_mosaic == 0


def test_task_aligned_assigner_is_one_option_away_and_trains():
    """loss/assigner=tal swaps SimOTA for task-aligned assignment: a training step gives finite losses, also
    on an image without boxes."""
    cfg = compose_train("head=yolox", "loss/assigner=tal", "backbone=resnet10t")
    assert cfg.loss.assigner._target_.endswith("TaskAlignedAssigner")
    assert compose_train("experiment=yolox_cpu").loss.assigner._target_ == cfg.loss.assigner._target_
    model = build_model(cfg, num_classes=3).train()
    images = torch.rand(2, 3, 128, 160) * 255
    targets = {"boxes": torch.tensor([[[10.0, 20, 60, 90]], [[0, 0, 0, 0]]]), "labels": torch.tensor([[1], [-1]])}
    losses = model(images, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
