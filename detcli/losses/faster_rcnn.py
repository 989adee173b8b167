"""Faster R-CNN criterion, both stages, as torchvision computes them:
- RPN: anchors matched at IoU 0.7 / 0.3 with low-quality matches (MaxIoUMatcher), 256 sampled per image,
  half positive (BalancedSampler); BCE on the sampled objectness logits and smooth-L1 (beta 1/9) on the
  positives' deltas against the anchors, both divided by the number sampled.
- RoI head: the RoIs the head sampled (it matched them, as its input depends on it); cross-entropy over
  C + 1 classes (background last) and a box term on the positives at their gt class: smooth-L1 on the
  deltas (box_coder.ROI_WEIGHTS), or GIoU on the decoded boxes; both divided by the number of RoIs.
Dense and masked: no host sync, no per-image loop; fp32 with autocast off.

Naming: B = images, N = anchors, S = RoIs per image, M = gt boxes per image (padded), C = classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detcli.losses.terms import check_choice, masked_sum, with_padding_slot
from detcli.ops import box_coder

ROI_BOX_LOSSES = ("smooth_l1", "giou")


def gather_gt(gt: Tensor, matched: Tensor) -> Tensor:
    """gt (B, M, k) or (B, M), matched (B, X) indices (negative = none: row 0) -> (B, X, k) or (B, X)."""
    idx = matched.clamp(min=0)
    if gt.dim() == 2:
        return torch.gather(gt, 1, idx)
    return torch.gather(gt, 1, idx[..., None].expand(-1, -1, gt.shape[-1]))


class FasterRCNNCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        rpn_matcher: nn.Module,
        rpn_sampler: nn.Module,
        rpn_box_beta: float = 1.0 / 9,
        roi_box_loss: str = "smooth_l1",
        roi_box_beta: float = 1.0 / 9,
        rpn_cls_weight: float = 1.0,
        rpn_box_weight: float = 1.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.rpn_matcher, self.rpn_sampler = rpn_matcher, rpn_sampler
        self.rpn_box_beta, self.roi_box_beta = rpn_box_beta, roi_box_beta
        self.roi_box_loss = check_choice("loss.roi_box_loss", roi_box_loss, ROI_BOX_LOSSES)
        self.weights = {"loss_rpn_cls": rpn_cls_weight, "loss_rpn_box": rpn_box_weight, "loss_cls": cls_weight,
                        "loss_box": box_weight}

    def reachable(self, priors: dict, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """(B, M) bool: the gt boxes an anchor overlaps by at least the RPN matcher's `high` IoU (the second
        stage always has one positive RoI: the gt boxes join the proposals in training)."""
        return self.rpn_matcher.reachable(gt_boxes, gt_labels >= 0, priors["anchors"][None])

    def forward(self, preds: dict, targets: dict, progress=None) -> dict[str, Tensor]:
        """targets: boxes (B, M, 4), labels (B, M) with -1 = padding."""
        with torch.autocast(preds["rpn_logits"].device.type, enabled=False):
            gt_boxes, gt_labels = with_padding_slot(targets["boxes"].float(), targets["labels"])
            losses = {**self.rpn_losses(preds, gt_boxes, gt_labels), **self.roi_losses(preds, gt_boxes, gt_labels)}
        return {k: self.weights[k] * v for k, v in losses.items()}

    def rpn_losses(self, preds: dict, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        logits, deltas = preds["rpn_logits"].float(), preds["rpn_deltas"].float()  # (B, N), (B, N, 4)
        anchors = preds["anchors"][None]  # (1, N, 4)
        matched = self.rpn_matcher(gt_boxes, gt_labels >= 0, anchors)  # (B, N)
        pos, neg = self.rpn_sampler(matched)  # (B, N) each
        sampled = pos | neg
        n = sampled.sum().float().clamp(min=1.0)
        bce = F.binary_cross_entropy_with_logits(logits, pos.float(), reduction="none")  # (B, N)
        target = box_coder.encode(anchors, gather_gt(gt_boxes, matched), box_coder.RPN_WEIGHTS)  # (B, N, 4)
        target = torch.where(pos[..., None], target, torch.zeros_like(target))  # no log(0) of padding slots
        l1 = F.smooth_l1_loss(deltas, target, beta=self.rpn_box_beta, reduction="none").sum(-1)  # (B, N)
        return {"loss_rpn_cls": masked_sum(sampled, bce) / n, "loss_rpn_box": masked_sum(pos, l1) / n}

    def roi_losses(self, preds: dict, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        C = self.num_classes
        logits, deltas = preds["cls_logits"].float(), preds["box_deltas"].float()  # (B, S, C + 1), (B, S, C, 4)
        rois, valid, matched = preds["rois"].float(), preds["roi_valid"], preds["roi_matched"]  # (B, S, 4), (B, S) x2
        fg = (matched >= 0) & valid  # (B, S)
        n = valid.sum().float().clamp(min=1.0)
        labels = torch.where(fg, gather_gt(gt_labels, matched), torch.full_like(matched, C))  # (B, S), C = background
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)  # (B, S)
        cls_deltas = torch.gather(deltas, 2, labels.clamp(max=C - 1)[..., None, None].expand(-1, -1, 1, 4))[:, :, 0]  # (B, S, 4)
        tgt_boxes = gather_gt(gt_boxes, matched)  # (B, S, 4)
        if self.roi_box_loss == "giou":
            from torchvision.ops import generalized_box_iou_loss

            pred_boxes = box_coder.decode(rois, cls_deltas, box_coder.ROI_WEIGHTS)  # (B, S, 4)
            box = generalized_box_iou_loss(pred_boxes, tgt_boxes, reduction="none")  # (B, S)
        else:
            target = box_coder.encode(rois, tgt_boxes, box_coder.ROI_WEIGHTS)  # (B, S, 4)
            target = torch.where(fg[..., None], target, torch.zeros_like(target))
            box = F.smooth_l1_loss(cls_deltas, target, beta=self.roi_box_beta, reduction="none").sum(-1)  # (B, S)
        return {"loss_cls": masked_sum(valid, ce) / n, "loss_box": masked_sum(fg, box) / n}
