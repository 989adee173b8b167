"""Loss terms every criterion picks by name from its config (`loss.box_loss`, `loss.cls_loss`): a
choice of key, not a registry. All return per-element losses (reduction is the criterion's job); plus
the pieces every criterion shares: the positive count over ranks, masked sums, the padding slot.

Naming: N = any leading shape (pairs of boxes, or points), C = classes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from detcli.ops.boxes import paired_iou

BOX_LOSSES = ("iou", "iou_squared", "giou", "diou", "ciou")
CLASS_LOSSES = ("focal", "bce")


def num_positives(fg: Tensor) -> Tensor:
    """Positives per process, averaged over ranks so that every rank divides by the same number."""
    n = fg.sum().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


def with_padding_slot(gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
    """A batch without any box (M = 0) gets one padding slot, so gathers by matched index stay valid;
    (B, M, 4), (B, M) -> the same, or (B, 1, 4) zeros and (B, 1) -1."""
    if gt_labels.shape[1] > 0:
        return gt_boxes, gt_labels
    return gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4), gt_labels.new_full((gt_labels.shape[0], 1), -1)


def masked_sum(mask: Tensor, values: Tensor) -> Tensor:
    """Sum of values where mask (same shape); a where(), not an index, so no host sync."""
    return torch.where(mask, values, torch.zeros_like(values)).sum()


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {' | '.join(choices)}")
    return value


def box_loss(name: str, pred: Tensor, target: Tensor) -> Tensor:
    """pred, target (N, 4) x1y1x2y2 -> (N,). iou: 1 - IoU; iou_squared: 1 - IoU^2 (YOLOX's official
    "iou" loss); giou / diou / ciou: torchvision.ops' generalized / distance / complete IoU losses."""
    if name == "iou":
        return 1 - paired_iou(pred, target)
    if name == "iou_squared":
        return 1 - paired_iou(pred, target) ** 2
    if name == "giou":
        return generalized_box_iou_loss(pred, target, reduction="none")
    if name == "diou":
        return distance_box_iou_loss(pred, target, reduction="none")
    if name == "ciou":
        return complete_box_iou_loss(pred, target, reduction="none")
    raise ValueError(f"box loss {name!r} is not one of {' | '.join(BOX_LOSSES)}")


def class_loss(name: str, logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """logits, targets (N, C), targets in [0, 1] (soft IoU-aware targets allowed) -> (N, C).
    focal: torchvision's sigmoid focal loss (alpha < 0 turns the weighting off); bce: plain BCE."""
    if name == "focal":
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    raise ValueError(f"class loss {name!r} is not one of {' | '.join(CLASS_LOSSES)}")
