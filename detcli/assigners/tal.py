"""Task-aligned assignment (TOOD, Feng et al. 2021; the form YOLOv8 and PP-YOLOE train with), for the whole
batch at once. A drop-in for SimOTA in the YOLOX criterion: the same inputs, the same outputs.

1. Candidates: points strictly inside a gt box.
2. Alignment of (gt, candidate) t = p^alpha x IoU^beta, p = the candidate's predicted probability of the
   gt's class, IoU = its predicted box's IoU with the gt.
3. Each gt takes its `topk` best-aligned candidates.
4. A point taken by several gts keeps the one its box overlaps most.
5. The soft target of a positive: t / (the largest t of its gt) x (the largest IoU of its gt's positives),
   so each gt's best-aligned point is pulled towards that gt's best IoU and the others below it.

Naming: B = images, R = points over all levels, M = gt boxes per image (padded), C = classes, K = topk.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detcli.ops.boxes import batched_box_iou


class TaskAlignedAssigner(nn.Module):
    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        super().__init__()
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def forward(
        self,
        points: Tensor,  # (R, 2) x, y
        point_strides: Tensor,  # (R,)
        cls_probs: Tensor,  # (B, R, C) class probabilities
        pred_boxes: Tensor,  # (B, R, 4) x1y1x2y2, decoded
        gt_boxes: Tensor,  # (B, M, 4) x1y1x2y2
        gt_labels: Tensor,  # (B, M), -1 = padding
    ) -> tuple[Tensor, Tensor]:
        """matched gt index per point (B, R), -1 = background, and the soft target of each positive
        (B, R), 0 for background."""
        B, R = cls_probs.shape[:2]
        M = gt_labels.shape[1]
        if M == 0:
            return torch.full((B, R), -1, dtype=torch.long, device=points.device), cls_probs.new_zeros(B, R)
        candidate = self.inside(points, gt_boxes) & (gt_labels >= 0)[..., None]  # (B, M, R)
        ious = batched_box_iou(gt_boxes, pred_boxes).clamp(min=0) * candidate  # (B, M, R)
        index = gt_labels.clamp(min=0)[..., None].expand(-1, -1, R)  # (B, M, R)
        probs = torch.gather(cls_probs.transpose(1, 2), 1, index)  # (B, M, R)
        align = probs.pow(self.alpha) * ious.pow(self.beta) * candidate  # (B, M, R)
        K = min(self.topk, R)
        top_idx = align.topk(K, dim=-1).indices  # (B, M, K)
        positive = torch.zeros_like(candidate).scatter_(-1, top_idx, True) & candidate  # (B, M, R)
        # a point taken by several gts: the gt its box overlaps most
        best_gt = torch.where(positive, ious, torch.full_like(ious, -1.0)).argmax(1)  # (B, R)
        fg = positive.any(1)  # (B, R)
        matched = torch.where(fg, best_gt, torch.full_like(best_gt, -1))  # (B, R)
        positive = positive & (torch.arange(M, device=points.device)[:, None] == best_gt[:, None])  # (B, M, R)
        align = align * positive
        max_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        max_iou = (ious * positive).amax(-1, keepdim=True)  # (B, M, 1)
        target = (align * max_iou / (max_align + self.eps)).amax(1)  # (B, R)
        return matched, target

    @torch.no_grad()
    def reachable(self, points: Tensor, point_strides: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
        """(B, M) bool: the gt boxes with at least one point inside (the only candidates they can take)."""
        if gt_valid.shape[1] == 0:
            return gt_valid.clone()
        return self.inside(points, gt_boxes.float()).any(-1) & gt_valid

    @staticmethod
    def inside(points: Tensor, gt_boxes: Tensor) -> Tensor:
        """(B, M, R) bool: the point strictly inside the gt box."""
        x, y = points[:, 0], points[:, 1]  # (R,)
        x1, y1, x2, y2 = gt_boxes[..., None].unbind(-2)  # each (B, M, 1)
        return (x > x1) & (x < x2) & (y > y1) & (y < y2)
