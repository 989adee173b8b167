"""FCOS head (Tian et al. 2019): predicts only. Assignment and losses live in detcli/assigners and
detcli/losses; the decoding (FCOSPostprocess) is below, the shared selection in models/heads/dense.py, NMS in
detcli/ops/nms.py.

Naming: B = images, R = points over all levels, C = classes, A = channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detcli.models.heads.dense import DensePostprocess
from detcli.ops.points import PointGrid, ltrb_to_boxes


def _tower(channels: int, num_convs: int, groups: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class Scale(nn.Module):
    """A learnable scalar per pyramid level (FCOS regression)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared cls / box towers over every level -> dense per-point predictions.

    forward(feats) returns
      cls_logits (B, R, C), bbox_reg (B, R, 4) as l,t,r,b distances in input pixels,
      centerness (B, R) logits, and the constants points (R, 2), strides (R,), level_sizes [L].
    """

    def __init__(
        self,
        in_channels: int | list[int],
        strides: list[int],
        num_classes: int,
        num_convs: int = 4,
        norm_groups: int = 32,
        prior_prob: float = 0.01,
        point_offset: float = 0.5,
    ):
        super().__init__()
        if not isinstance(in_channels, int):  # a neck may advertise one count per level
            if len(set(in_channels)) != 1:
                raise ValueError(
                    "head=fcos shares its towers across levels and needs one channel count for every level; "
                    f"the neck gives {list(in_channels)}: use neck=fpn, or a neck with equal channels"
                )
            in_channels = in_channels[0]
        self.num_classes = num_classes
        self.strides = list(strides)
        self.cls_tower = _tower(in_channels, num_convs, norm_groups)
        self.box_tower = _tower(in_channels, num_convs, norm_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.grad_checkpointing = False
        self.grid = PointGrid(self.strides, point_offset)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, feats: list[Tensor], targets: dict | None = None,
                image_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """targets and image_sizes (given in training) are not needed by a dense one-stage head."""
        cls_out, box_out, ctr_out = [], [], []
        for feat, scale, stride in zip(feats, self.scales, self.strides):
            if self.grad_checkpointing and self.training:
                cls, box, ctr = checkpoint(self._level, feat, scale, stride, use_reentrant=False)
            else:
                cls, box, ctr = self._level(feat, scale, stride)
            cls_out.append(cls.flatten(2))  # (B, C, h*w)
            box_out.append(box.flatten(2))  # (B, 4, h*w)
            ctr_out.append(ctr.flatten(2))  # (B, 1, h*w)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        return {
            "cls_logits": torch.cat(cls_out, 2).transpose(1, 2),  # (B, R, C)
            "bbox_reg": torch.cat(box_out, 2).transpose(1, 2),  # (B, R, 4)
            "centerness": torch.cat(ctr_out, 2)[:, 0],  # (B, R)
            **self.priors(sizes, feats[0].device),
        }

    def class_layout(self) -> dict[str, tuple[int, int]]:
        """The parameters whose first axis runs over the classes (see Head.class_layout)."""
        return {"cls_logits.weight": (1, 0), "cls_logits.bias": (1, 0)}

    def priors(self, sizes: list[tuple[int, int]], device) -> dict:
        """The constants of the feature sizes [(h, w)] per level that the criterion assigns targets over."""
        return self.grid.priors(sizes, device)

    def _level(self, feat: Tensor, scale: nn.Module, stride: int) -> tuple[Tensor, Tensor, Tensor]:
        cls_feat = self.cls_tower(feat)
        box_feat = self.box_tower(feat)
        # normalised regression targets: distances in units of the level's stride, kept >= 0
        ltrb = torch.relu(scale(self.bbox_pred(box_feat))) * stride  # (B, 4, h, w)
        return self.cls_logits(cls_feat), ltrb, self.centerness(box_feat)


class FCOSPostprocess(DensePostprocess):
    """score = sqrt(sigmoid(cls) * sigmoid(centerness)), boxes from the l,t,r,b distances."""

    def scores_and_boxes(self, preds: dict) -> tuple[Tensor, Tensor]:
        scores = torch.sqrt(
            preds["cls_logits"].float().sigmoid() * preds["centerness"].float().sigmoid()[..., None]
        )  # (B, R, C)
        return scores, ltrb_to_boxes(preds["points"], preds["bbox_reg"].float())  # (B, R, 4)
