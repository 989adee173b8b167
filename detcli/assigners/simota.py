"""SimOTA (YOLOX, Ge et al. 2021): a dynamic-k matching of points to gt boxes by a cost, for the whole
batch at once.

1. Candidates: points inside any gt box or within `center_radius` strides of any gt centre (both tests
   on the point, strictly inside).
2. Cost of (gt, candidate) = cls_weight x BCE(sqrt(p_cls x p_obj), one-hot of the gt class) summed over
   classes + iou_weight x -log(IoU(pred box, gt)) + `outside_cost` when the point is not both inside
   that gt box and within its centre radius.
3. Each gt takes its k cheapest candidates, k = floor(sum of its `candidate_topk` largest IoUs with the
   candidates), at least 1.
4. A point taken by several gts keeps the cheapest of them.

Naming: B = images, R = points over all levels, M = gt boxes per image (padded), C = classes,
K = candidate_topk.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detcli.ops.boxes import batched_box_iou


class SimOTAAssigner(nn.Module):
    def __init__(self, center_radius: float = 2.5, candidate_topk: int = 10, cls_weight: float = 1.0,
                 iou_weight: float = 3.0, outside_cost: float = 1e5):
        super().__init__()
        self.center_radius = center_radius
        self.candidate_topk = candidate_topk
        self.cls_weight = cls_weight
        self.iou_weight = iou_weight
        self.outside_cost = outside_cost

    @torch.no_grad()
    def forward(
        self,
        points: Tensor,  # (R, 2) x, y
        point_strides: Tensor,  # (R,)
        cls_probs: Tensor,  # (B, R, C) joint class probability sqrt(p_cls x p_obj)
        pred_boxes: Tensor,  # (B, R, 4) x1y1x2y2, decoded
        gt_boxes: Tensor,  # (B, M, 4) x1y1x2y2
        gt_labels: Tensor,  # (B, M), -1 = padding
    ) -> tuple[Tensor, Tensor]:
        """matched gt index per point (B, R), -1 = background, and the IoU of the prediction with its
        matched gt (B, R), 0 for background."""
        B, R = cls_probs.shape[:2]
        M = gt_labels.shape[1]
        if M == 0:
            return torch.full((B, R), -1, dtype=torch.long, device=points.device), cls_probs.new_zeros(B, R)
        valid = gt_labels >= 0  # (B, M)
        in_box, in_centre = self.regions(points, point_strides, gt_boxes)  # (B, M, R) each
        candidate = (in_box | in_centre) & valid[..., None]  # (B, M, R)
        candidate = candidate.any(1, keepdim=True) & valid[..., None]  # any gt's region counts for all gts
        ious = batched_box_iou(gt_boxes, pred_boxes)  # (B, M, R)
        cost = (
            self.cls_weight * self.class_cost(cls_probs, gt_labels)
            + self.iou_weight * -torch.log(ious + 1e-8)
            + self.outside_cost * ~(in_box & in_centre)
        )  # (B, M, R)
        cost = torch.where(candidate, cost, torch.full_like(cost, torch.inf))
        ious = torch.where(candidate, ious, torch.zeros_like(ious))
        matching = self.dynamic_k_matching(cost, ious, valid)  # (B, M, R)
        claimed = torch.where(matching, cost, torch.full_like(cost, torch.inf))
        best_cost, best_gt = claimed.min(1)  # (B, R): the cheapest of the gts that took the point
        fg = torch.isfinite(best_cost)
        matched = torch.where(fg, best_gt, torch.full_like(best_gt, -1))
        matched_iou = torch.gather(ious, 1, best_gt[:, None]).squeeze(1) * fg  # (B, R)
        return matched, matched_iou

    @torch.no_grad()
    def reachable(self, points: Tensor, point_strides: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
        """(B, M) bool: the gt boxes with at least one candidate point (inside the box or within center_radius
        strides of its centre): the ones a prediction can be matched to, whatever the network predicts."""
        if gt_valid.shape[1] == 0:
            return gt_valid.clone()
        in_box, in_centre = self.regions(points, point_strides, gt_boxes.float())  # (B, M, R) each
        return (in_box | in_centre).any(-1) & gt_valid

    def regions(self, points: Tensor, point_strides: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(inside the gt box, within center_radius strides of its centre), each (B, M, R)."""
        x, y = points[:, 0], points[:, 1]  # (R,)
        x1, y1, x2, y2 = gt_boxes[..., None].unbind(-2)  # each (B, M, 1)
        in_box = (x > x1) & (x < x2) & (y > y1) & (y < y2)
        r = self.center_radius * point_strides  # (R,)
        in_centre = ((x - (x1 + x2) / 2).abs() < r) & ((y - (y1 + y2) / 2).abs() < r)
        return in_box, in_centre

    @staticmethod
    def class_cost(cls_probs: Tensor, gt_labels: Tensor) -> Tensor:
        """BCE of every point's class probabilities against each gt's one-hot class, summed over classes:
        sum_c -log(1 - p_c) + log(1 - p_label) - log(p_label); (B, R, C), (B, M) -> (B, M, R). Logs are
        clamped at -100 as F.binary_cross_entropy does."""
        log_p = cls_probs.log().clamp(min=-100)  # (B, R, C)
        log_not_p = (1 - cls_probs).log().clamp(min=-100)  # (B, R, C)
        index = gt_labels.clamp(min=0)[..., None].expand(-1, -1, cls_probs.shape[1])  # (B, M, R)
        log_p_label = torch.gather(log_p.transpose(1, 2), 1, index)  # (B, M, R)
        log_not_p_label = torch.gather(log_not_p.transpose(1, 2), 1, index)  # (B, M, R)
        return -log_not_p.sum(-1)[:, None] + log_not_p_label - log_p_label

    def dynamic_k_matching(self, cost: Tensor, ious: Tensor, valid: Tensor) -> Tensor:
        """Each gt takes its k cheapest candidates; (B, M, R) costs (inf = not a candidate) and IoUs ->
        matching (B, M, R) bool."""
        K = min(self.candidate_topk, cost.shape[-1])
        dynamic_k = ious.topk(K, dim=-1).values.sum(-1).int().clamp(min=1) * valid  # (B, M)
        top_cost, top_idx = cost.topk(K, dim=-1, largest=False)  # (B, M, K)
        take = (torch.arange(K, device=cost.device) < dynamic_k[..., None]) & torch.isfinite(top_cost)  # (B, M, K)
        return torch.zeros_like(cost, dtype=torch.bool).scatter_(-1, top_idx, take)
