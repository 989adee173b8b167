"""Max-IoU matching and balanced sampling (Faster R-CNN, Ren et al. 2015), for the whole batch at once.

MaxIoUMatcher: each box (anchor or proposal) takes the gt it overlaps most. IoU >= `high` -> that gt;
IoU < `low` -> background (-1); in between -> ignored (-2). With `allow_low_quality`, every box that is
some gt's best match (ties included) takes its own best gt even below `high`, so that no gt is left
without a box (the RPN's rule); a gt that overlaps no box at all promotes nothing.

BalancedSampler: per image, up to `num_per_image` x `positive_fraction` random positives, then random
negatives up to `num_per_image` in all; ignored boxes and invalid slots are never sampled.

Naming: B = images, M = gt boxes per image (padded, label -1), N = boxes to match per image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detcli.ops.boxes import batched_box_iou

BACKGROUND, IGNORE = -1, -2


class MaxIoUMatcher(nn.Module):
    def __init__(self, high: float = 0.7, low: float = 0.3, allow_low_quality: bool = True,
                 max_elements: int = 1 << 25):
        super().__init__()
        if low > high:
            raise ValueError(f"the matcher's low threshold {low} is above its high threshold {high}")
        self.high, self.low, self.allow_low_quality = high, low, allow_low_quality
        self.max_elements = max_elements  # IoU entries computed at once: the N axis is cut in chunks past it

    @torch.no_grad()
    def forward(self, gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor) -> Tensor:
        """gt_boxes (B, M, 4), gt_valid (B, M), boxes (B, N, 4) or shared (1, N, 4) -> matched (B, N): gt
        index >= 0, BACKGROUND (-1) or IGNORE (-2)."""
        B, M = gt_valid.shape
        N = boxes.shape[1]
        if M == 0:
            return torch.full((B, N), BACKGROUND, dtype=torch.long, device=boxes.device)
        chunk = max(1, self.max_elements // max(1, B * M))
        gt_boxes = gt_boxes.float()
        best_iou, best_gt, per_gt = [], [], []
        for start in range(0, N, chunk):  # one pass for big anchor sets (800 px RPN), a single one otherwise
            iou = self._iou(gt_boxes, gt_valid, boxes[:, start : start + chunk])  # (B, M, n)
            value, index = iou.max(1)  # (B, n)
            best_iou.append(value)
            best_gt.append(index)
            per_gt.append(iou.amax(2))  # (B, M)
        best_iou, best_gt = torch.cat(best_iou, 1), torch.cat(best_gt, 1)  # (B, N)
        matched = torch.where(best_iou >= self.high, best_gt, torch.full_like(best_gt, IGNORE))
        matched = torch.where(best_iou < self.low, torch.full_like(best_gt, BACKGROUND), matched)
        if self.allow_low_quality:
            highest = torch.stack(per_gt).amax(0)  # (B, M): each gt's best IoU with any box
            promoted = torch.cat([
                ((self._iou(gt_boxes, gt_valid, boxes[:, s : s + chunk]) == highest[..., None])
                 & (highest[..., None] > 0)).any(1)
                for s in range(0, N, chunk)
            ], 1)  # (B, N)
            matched = torch.where(promoted, best_gt, matched)
        return matched

    @torch.no_grad()
    def reachable(self, gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor) -> Tensor:
        """(B, M) bool: the gts whose best IoU with any of the boxes (B or 1, N, 4) reaches `high`, i.e. that
        get a positive without the low-quality rule (YOLOv5's "best possible recall", for IoU)."""
        B, M = gt_valid.shape
        if M == 0:
            return gt_valid.clone()
        N = boxes.shape[1]
        chunk = max(1, self.max_elements // max(1, B * M))
        best = torch.stack([self._iou(gt_boxes.float(), gt_valid, boxes[:, s : s + chunk]).amax(2)
                            for s in range(0, N, chunk)]).amax(0)  # (B, M)
        return (best >= self.high) & gt_valid

    @staticmethod
    def _iou(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor) -> Tensor:
        """(B, M, n) IoU, -1 for padded gts (never anyone's best)."""
        iou = batched_box_iou(gt_boxes, boxes.float())  # (B, M, n)
        return torch.where(gt_valid[..., None], iou, torch.full_like(iou, -1.0))


class BalancedSampler(nn.Module):
    def __init__(self, num_per_image: int = 256, positive_fraction: float = 0.5):
        super().__init__()
        self.num_per_image, self.positive_fraction = num_per_image, positive_fraction

    @torch.no_grad()
    def forward(self, matched: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """matched (B, N) from MaxIoUMatcher, valid (B, N) (default all) -> sampled positives and
        negatives, (B, N) bool each."""
        pos = matched >= 0  # (B, N)
        neg = matched == BACKGROUND
        if valid is not None:
            pos, neg = pos & valid, neg & valid
        num_pos = pos.sum(1).clamp(max=int(self.num_per_image * self.positive_fraction))  # (B,)
        num_neg = torch.minimum(neg.sum(1), self.num_per_image - num_pos)  # (B,)
        return self._random_subset(pos, num_pos), self._random_subset(neg, num_neg)

    @staticmethod
    def _random_subset(mask: Tensor, count: Tensor) -> Tensor:
        """`count[b]` of the True entries of row b of mask (B, N), uniformly at random."""
        keys = torch.where(mask, torch.rand(mask.shape, device=mask.device), torch.full(mask.shape, 2.0, device=mask.device))
        rank = torch.empty_like(keys, dtype=torch.long).scatter_(
            1, keys.argsort(1), torch.arange(mask.shape[1], device=mask.device).expand_as(keys))  # (B, N)
        return mask & (rank < count[:, None])
