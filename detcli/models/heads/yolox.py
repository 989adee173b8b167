"""YOLOX head (Ge et al. 2021): predicts only. SimOTA lives in detcli/assigners/simota.py, the losses in
detcli/losses/yolox.py; the decoding (YOLOXPostprocess) is below, the shared selection in models/heads/dense.py, NMS in
detcli/ops/nms.py.

Naming: B = images, R = points over all levels, C = classes, A = channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detcli.models.heads.dense import DensePostprocess
from detcli.models.layers import ConvBNAct, conv
from detcli.ops.points import PointGrid, offsets_to_boxes


class YOLOXHead(nn.Module):
    """Per level: a 1x1 stem to `channels`, then decoupled branches — classification (`num_convs` 3x3
    convs -> C logits) and regression (`num_convs` 3x3 convs -> 4 box offsets and 1 objectness logit).

    forward(feats) returns
      cls_logits (B, R, C), box_offsets (B, R, 4) as (dx, dy, log w, log h) in units of the level's
      stride around each point (detcli.ops.points.offsets_to_boxes decodes them), objectness (B, R)
      logits, and the constants points (R, 2), strides (R,), level_sizes [L].
    """

    def __init__(
        self,
        in_channels: int | list[int],
        strides: list[int],
        num_classes: int,
        channels: int | None = None,
        num_convs: int = 2,
        depthwise: bool = False,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        in_channels = [in_channels] * len(strides) if isinstance(in_channels, int) else list(in_channels)
        channels = channels or min(in_channels)  # YOLOX: 256 x width, the neck's P3 width
        self.num_classes = num_classes
        self.strides = list(strides)
        self.stems = nn.ModuleList(ConvBNAct(c, channels, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(self._branch(channels, num_convs, depthwise) for _ in strides)
        self.reg_convs = nn.ModuleList(self._branch(channels, num_convs, depthwise) for _ in strides)
        self.cls_preds = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in strides)
        self.reg_preds = nn.ModuleList(nn.Conv2d(channels, 4, 1) for _ in strides)
        self.obj_preds = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in strides)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for pred in (*self.cls_preds, *self.obj_preds):
            nn.init.constant_(pred.bias, bias)
        self.grid = PointGrid(self.strides)
        self.grad_checkpointing = False

    @staticmethod
    def _branch(channels: int, num_convs: int, depthwise: bool) -> nn.Sequential:
        return nn.Sequential(*(conv(channels, channels, 3, depthwise=depthwise) for _ in range(num_convs)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, feats: list[Tensor], targets: dict | None = None,
                image_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """targets and image_sizes (given in training) are not needed by a dense one-stage head."""
        cls_out, reg_out, obj_out = [], [], []
        for i, feat in enumerate(feats):
            if self.grad_checkpointing and self.training:
                cls, reg, obj = checkpoint(self._level, feat, i, use_reentrant=False)
            else:
                cls, reg, obj = self._level(feat, i)
            cls_out.append(cls.flatten(2))  # (B, C, h*w)
            reg_out.append(reg.flatten(2))  # (B, 4, h*w)
            obj_out.append(obj.flatten(2))  # (B, 1, h*w)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        return {
            "cls_logits": torch.cat(cls_out, 2).transpose(1, 2),  # (B, R, C)
            "box_offsets": torch.cat(reg_out, 2).transpose(1, 2),  # (B, R, 4)
            "objectness": torch.cat(obj_out, 2)[:, 0],  # (B, R)
            **self.priors(sizes, feats[0].device),
        }

    def class_layout(self) -> dict[str, tuple[int, int]]:
        """The parameters whose first axis runs over the classes (see Head.class_layout)."""
        return {f"cls_preds.{i}.{p}": (1, 0) for i in range(len(self.strides)) for p in ("weight", "bias")}

    def priors(self, sizes: list[tuple[int, int]], device) -> dict:
        """The constants of the feature sizes [(h, w)] per level that the criterion assigns targets over."""
        return self.grid.priors(sizes, device)

    def _level(self, feat: Tensor, i: int) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stems[i](feat)  # (B, A, h, w)
        reg_feat = self.reg_convs[i](x)
        return self.cls_preds[i](self.cls_convs[i](x)), self.reg_preds[i](reg_feat), self.obj_preds[i](reg_feat)


class YOLOXPostprocess(DensePostprocess):
    """score = sigmoid(objectness) x sigmoid(class logit); boxes from the centre offsets and log sizes."""

    def scores_and_boxes(self, preds: dict) -> tuple[Tensor, Tensor]:
        scores = preds["cls_logits"].float().sigmoid() * preds["objectness"].float().sigmoid()[..., None]  # (B, R, C)
        return scores, offsets_to_boxes(preds["points"], preds["strides"], preds["box_offsets"].float())  # (B, R, 4)
