"""FCOS criterion: assign, then focal + GIoU (loss.cls_loss, loss.box_loss) + centerness BCE, each
summed and divided by the number of positives (summed over ranks under DDP). Dense and masked: no host sync, no per-image loop.

Naming: B = images, R = points, C = classes, M = gt boxes per image (padded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detcli.losses.terms import (
    BOX_LOSSES,
    CLASS_LOSSES,
    box_loss,
    check_choice,
    class_loss,
    masked_sum,
    num_positives,
    with_padding_slot,
)
from detcli.ops.points import boxes_to_ltrb, ltrb_to_boxes


def centerness_target(ltrb: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for (..., 4) distances; 0 where undefined."""
    lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()


class FCOSCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        assigner: nn.Module,
        box_loss: str = "giou",
        cls_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_weight: float = 1.0,
        centerness_weight: float = 1.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.assigner = assigner
        self.box_loss = check_choice("loss.box_loss", box_loss, BOX_LOSSES)
        self.cls_loss = check_choice("loss.cls_loss", cls_loss, CLASS_LOSSES)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_weight = box_weight
        self.centerness_weight = centerness_weight

    def forward(self, preds: dict, targets: dict, progress=None) -> dict[str, Tensor]:
        """targets: boxes (B, M, 4), labels (B, M) with -1 = padding; FCOS's terms do not depend on
        the training progress."""
        device_type = preds["cls_logits"].device.type
        with torch.autocast(device_type, enabled=False):  # costs, matching and losses in fp32
            return self._losses(preds, targets)

    def reachable(self, priors: dict, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """(B, M) bool: the gt boxes that get at least one positive point, from the head's priors alone."""
        return self.assigner.reachable(priors["points"], priors["strides"], priors["level_sizes"], gt_boxes.float(),
                                       gt_labels >= 0)

    def _losses(self, preds: dict, targets: dict) -> dict[str, Tensor]:
        cls_logits = preds["cls_logits"].float()  # (B, R, C)
        bbox_reg = preds["bbox_reg"].float()  # (B, R, 4)
        ctr_logits = preds["centerness"].float()  # (B, R)
        points, strides = preds["points"], preds["strides"]  # (R, 2), (R,)
        gt_boxes = targets["boxes"].float()  # (B, M, 4)
        gt_labels = targets["labels"]  # (B, M), -1 = padding
        gt_boxes, gt_labels = with_padding_slot(gt_boxes, gt_labels)
        matched = self.assigner(points, strides, preds["level_sizes"], gt_boxes, gt_labels >= 0)  # (B, R)
        fg = matched >= 0  # (B, R)
        idx = matched.clamp(min=0)
        tgt_boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))  # (B, R, 4)
        tgt_labels = torch.gather(gt_labels, 1, idx).clamp(min=0)  # (B, R)
        n_pos = num_positives(fg)

        onehot = torch.zeros_like(cls_logits)
        onehot.scatter_(2, tgt_labels[..., None], fg[..., None].to(onehot.dtype))  # (B, R, C)
        loss_cls = class_loss(self.cls_loss, cls_logits, onehot, self.focal_alpha, self.focal_gamma).sum()

        pred_boxes = ltrb_to_boxes(points, bbox_reg)  # (B, R, 4)
        box = box_loss(self.box_loss, pred_boxes, tgt_boxes)  # (B, R)
        loss_box = masked_sum(fg, box)

        ctr_target = centerness_target(boxes_to_ltrb(points, tgt_boxes))  # (B, R)
        bce = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="none")  # (B, R)
        loss_ctr = masked_sum(fg, bce)
        return {
            "loss_cls": loss_cls / n_pos,
            "loss_box": self.box_weight * loss_box / n_pos,
            "loss_ctr": self.centerness_weight * loss_ctr / n_pos,
        }
