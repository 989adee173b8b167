"""YOLOX criterion: SimOTA assignment (or any assigner of the same contract: assigners/tal.py), then an IoU
loss on matched boxes, BCE objectness on every point, BCE classification with IoU-aware targets on positives
(the assigner's soft target), and an L1 term on the raw offsets in the last epochs without strong
augmentation; each summed and divided by the number of positives (averaged over ranks under DDP). Dense and
masked: no host sync, no per-image loop.

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
from detcli.ops.points import boxes_to_offsets, offsets_to_boxes


class YOLOXCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        assigner: nn.Module,
        box_loss: str = "iou_squared",
        cls_loss: str = "bce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_weight: float = 5.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        l1_weight: float = 1.0,
        use_l1: bool | str = "auto",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.assigner = assigner
        self.box_loss = check_choice("loss.box_loss", box_loss, BOX_LOSSES)
        self.cls_loss = check_choice("loss.cls_loss", cls_loss, CLASS_LOSSES)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.box_weight, self.obj_weight, self.cls_weight, self.l1_weight = box_weight, obj_weight, cls_weight, l1_weight
        if use_l1 not in (True, False, "auto"):
            raise ValueError(f"loss.use_l1 must be true, false or auto, got {use_l1!r}")
        self.use_l1 = use_l1

    def l1_on(self, progress) -> bool:
        """auto: on in the final epochs, when the data turns mosaic and mixup off (data.close_mosaic)."""
        if self.use_l1 == "auto":
            return bool(progress is not None and progress.final_phase)
        return bool(self.use_l1)

    def reachable(self, priors: dict, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """(B, M) bool: the gt boxes with at least one SimOTA candidate point, from the head's priors alone."""
        return self.assigner.reachable(priors["points"], priors["strides"], gt_boxes, gt_labels >= 0)

    def forward(self, preds: dict, targets: dict, progress=None) -> dict[str, Tensor]:
        """targets: boxes (B, M, 4), labels (B, M) with -1 = padding; progress: TrainingProgress."""
        device_type = preds["cls_logits"].device.type
        with torch.autocast(device_type, enabled=False):  # costs, matching and losses in fp32
            return self._losses(preds, targets, self.l1_on(progress))

    def _losses(self, preds: dict, targets: dict, use_l1: bool) -> dict[str, Tensor]:
        cls_logits = preds["cls_logits"].float()  # (B, R, C)
        offsets = preds["box_offsets"].float()  # (B, R, 4)
        obj_logits = preds["objectness"].float()  # (B, R)
        points, strides = preds["points"], preds["strides"]  # (R, 2), (R,)
        gt_boxes = targets["boxes"].float()  # (B, M, 4)
        gt_labels = targets["labels"]  # (B, M), -1 = padding
        pred_boxes = offsets_to_boxes(points, strides, offsets)  # (B, R, 4)
        probs = (cls_logits.sigmoid() * obj_logits.sigmoid()[..., None]).sqrt()  # (B, R, C)
        matched, matched_iou = self.assigner(points, strides, probs.detach(), pred_boxes.detach(), gt_boxes,
                                             gt_labels)  # (B, R) each
        fg = matched >= 0  # (B, R)
        idx = matched.clamp(min=0)
        gt_boxes, gt_labels = with_padding_slot(gt_boxes, gt_labels)
        tgt_boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))  # (B, R, 4)
        tgt_labels = torch.gather(gt_labels, 1, idx).clamp(min=0)  # (B, R)
        n_pos = num_positives(fg)

        loss_box = box_loss(self.box_loss, pred_boxes, tgt_boxes)  # (B, R)
        loss_obj = F.binary_cross_entropy_with_logits(obj_logits, fg.float(), reduction="sum")
        cls_target = torch.zeros_like(cls_logits).scatter_(2, tgt_labels[..., None], matched_iou[..., None])  # (B, R, C)
        loss_cls = class_loss(self.cls_loss, cls_logits, cls_target, self.focal_alpha, self.focal_gamma).sum(-1)  # (B, R)
        losses = {
            "loss_box": self.box_weight * masked_sum(fg, loss_box) / n_pos,
            "loss_obj": self.obj_weight * loss_obj / n_pos,
            "loss_cls": self.cls_weight * masked_sum(fg, loss_cls) / n_pos,
        }
        losses["loss_l1"] = n_pos.new_zeros(())  # always reported (0 while off): every step logs the same terms
        if use_l1:
            l1 = (offsets - boxes_to_offsets(points, strides, tgt_boxes)).abs().sum(-1)  # (B, R)
            losses["loss_l1"] = self.l1_weight * masked_sum(fg, l1) / n_pos
        return losses

