"""PAFPN (YOLOX's neck): shapes over timm backbones, width/depth multipliers, depthwise convs, gradient
checkpointing, the three-level contract, and its config."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from detcli.build import instantiate_group
from detcli.config import config_dir
from detcli.errors import ConfigError
from detcli.models.backbones.timm import TimmBackbone
from detcli.models.heads.fcos import FCOSHead
from detcli.models.layers import ConvBNAct, DWConv
from detcli.models.necks.pafpn import PAFPN

STRIDES = [8, 16, 32]


def features(channels: list[int], size: tuple[int, int] = (64, 96), batch: int = 2) -> list[torch.Tensor]:
    """Random C3..C5 maps for an input of `size` (sides multiples of 32)."""
    h, w = size
    return [torch.randn(batch, c, h // s, w // s) for c, s in zip(channels, STRIDES)]


def csp_layers(neck: PAFPN) -> list:
    return [neck.top_down4, neck.top_down3, neck.bottom_up4, neck.bottom_up5]


@pytest.mark.parametrize("name", ["resnet18", "cs3darknet_s", "convnext_atto"])
def test_outputs_over_timm_backbones(name):
    backbone = TimmBackbone(name, pretrained=False)
    neck = PAFPN(backbone.out_channels, backbone.strides)
    assert neck.out_channels == [128, 256, 512] and neck.strides == [8, 16, 32]
    with torch.no_grad():
        outs = neck(backbone(torch.zeros(2, 3, 64, 96)))
    assert [tuple(o.shape) for o in outs] == [(2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]


def test_odd_input_sizes_upsample_to_the_lateral():
    backbone = TimmBackbone("resnet18", pretrained=False)
    neck = PAFPN(backbone.out_channels, backbone.strides).eval()
    with torch.no_grad():
        outs = neck(backbone(torch.zeros(1, 3, 65, 97)))  # levels of 9x13, 5x7, 3x4
    assert [tuple(o.shape[-2:]) for o in outs] == [(9, 13), (5, 7), (3, 4)]


@pytest.mark.parametrize(
    "width, depth, channels, blocks",
    [
        (0.25, 0.33, [64, 128, 256], 1),  # YOLOX-tiny width; round(0.99) = 1
        (0.5, 0.33, [128, 256, 512], 1),  # YOLOX-s
        (0.75, 0.67, [192, 384, 768], 2),  # YOLOX-m; round(2.01) = 2
        (1.0, 1.0, [256, 512, 1024], 3),  # YOLOX-l
        (0.5, 0.1, [128, 256, 512], 1),  # round(0.3) = 0, kept at one bottleneck
    ],
)
def test_width_and_depth_multipliers(width, depth, channels, blocks):
    neck = PAFPN([96, 200, 300], STRIDES, width=width, depth=depth)  # channels unlike any output width
    assert neck.out_channels == channels
    assert [len(csp.blocks) for csp in csp_layers(neck)] == [blocks] * 4
    assert not any(b.shortcut for csp in csp_layers(neck) for b in csp.blocks)
    outs = neck(features([96, 200, 300]))
    assert [o.shape[1] for o in outs] == channels


def test_depthwise_builds_separable_convs_in_the_bottom_up_path():
    neck = PAFPN([128, 256, 512], STRIDES, depthwise=True)
    assert isinstance(neck.down3, DWConv) and isinstance(neck.down4, DWConv)
    assert all(isinstance(b.conv2, DWConv) for csp in csp_layers(neck) for b in csp.blocks)
    plain = PAFPN([128, 256, 512], STRIDES)
    assert isinstance(plain.down3, ConvBNAct) and isinstance(plain.down4, ConvBNAct)
    assert sum(p.numel() for p in neck.parameters()) < sum(p.numel() for p in plain.parameters())
    assert [o.shape[1] for o in neck(features([128, 256, 512]))] == [128, 256, 512]


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    neck = PAFPN([128, 256, 512], STRIDES, width=0.25).train()
    feats = features([128, 256, 512])
    weights = [torch.randn(2, c, 64 // s, 96 // s) for c, s in zip([64, 128, 256], STRIDES)]  # as the outputs
    results = []
    for enable in (False, True):
        neck.set_grad_checkpointing(enable)
        neck.zero_grad()
        inputs = [f.clone().requires_grad_() for f in feats]
        outs = neck(inputs)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads = {n: p.grad.clone() for n, p in neck.named_parameters()}
        results.append((outs, grads, [x.grad for x in inputs]))
    (plain, g0, x0), (ckpt, g1, x1) = results
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-6)
    for a, b in zip(x0, x1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_wrong_number_of_levels_names_backbone_strides():
    with pytest.raises(ValueError, match=r"three backbone levels.*got 4.*backbone\.strides"):
        PAFPN([64, 128, 256, 512], [4, 8, 16, 32])
    with pytest.raises(ValueError, match=r"got 2.*backbone\.strides"):
        PAFPN([256, 512], [16, 32])


def test_config_composes_and_instantiates():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["neck=pafpn", "backbone=cs3darknet_s"])
    assert cfg.neck._target_ == "detcli.models.necks.pafpn.PAFPN" and cfg.backbone.name == "cs3darknet_s"
    backbone = instantiate_group("backbone", cfg.backbone)
    assert backbone.out_channels == [128, 256, 512] and backbone.strides == [8, 16, 32]
    neck = instantiate_group("neck", cfg.neck, in_channels=backbone.out_channels, in_strides=backbone.strides)
    assert isinstance(neck, PAFPN) and neck.out_channels == [128, 256, 512] and neck.strides == [8, 16, 32]
    with pytest.raises(ConfigError, match=r"neck: .*backbone\.strides"):
        instantiate_group("neck", cfg.neck, in_channels=[256, 512], in_strides=[16, 32])


def test_fcos_head_takes_equal_per_level_channels_and_refuses_unequal_ones():
    head = FCOSHead([64, 64, 64], STRIDES, num_classes=3)
    assert head.cls_logits.in_channels == 64
    assert FCOSHead(64, STRIDES, num_classes=3).cls_logits.in_channels == 64
    with pytest.raises(ValueError, match=r"the neck gives \[128, 256, 512\]: use neck=fpn"):
        FCOSHead([128, 256, 512], STRIDES, num_classes=3)
