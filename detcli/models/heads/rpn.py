"""Region Proposal Network (Ren et al. 2015, with FPN levels as Lin et al. 2017): a shared 3x3 conv, then
per anchor an objectness logit and box deltas; and the proposal selection, for the whole batch at once:
per level the `pre_nms_topk` best anchors, decoded (detcli/ops/box_coder.py), clipped, tiny boxes
dropped, NMS inside each level, the `post_nms_topk` best per image. Its matching and losses live in
detcli/assigners/max_iou.py and detcli/losses/faster_rcnn.py.

Proposals have a fixed shape (B, P, 4) with a validity mask: an image with fewer boxes left after NMS
pads with zero boxes, so the second stage and an exported graph see one tensor for the batch.

Naming: B = images, N = anchors over all levels, A = anchors per location, K = candidates per image,
P = proposals per image, L = levels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detcli.ops import box_coder
from detcli.ops.boxes import clip_boxes
from detcli.ops.nms import nms_topk
from detcli.ops.tracing import topk_size


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared over levels, then 1x1 convs to A objectness logits and 4A deltas."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """feats, one (B, c, h, w) per level -> objectness (B, N) and deltas (B, N, 4), in the anchors'
        order (location-major, the A anchors of a location consecutive)."""
        logits, deltas = [], []
        for feat in feats:
            x = torch.relu(self.conv(feat))
            logits.append(self.cls_logits(x).permute(0, 2, 3, 1).flatten(1))  # (B, h*w*A)
            d = self.bbox_pred(x)  # (B, 4A, h, w)
            d = d.reshape(d.shape[0], -1, 4, *d.shape[-2:])  # (B, A, 4, h, w)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(d.shape[0], -1, 4))  # (B, h*w*A, 4)
        return torch.cat(logits, 1), torch.cat(deltas, 1)


def select_proposals(
    logits: Tensor,  # (B, N) objectness logits
    deltas: Tensor,  # (B, N, 4)
    anchors: Tensor,  # (N, 4)
    level_sizes: list[int],  # anchors per level
    image_sizes: Tensor,  # (B, 2) as (h, w)
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float,
) -> tuple[Tensor, Tensor]:
    """proposals (B, P, 4) x1y1x2y2 and valid (B, P), P = post_nms_topk (at most the candidates), the
    best objectness first. No gradient flows into the proposals (Faster R-CNN's approximate joint training)."""
    logits, deltas = logits.detach().float(), deltas.detach().float()
    top_logits, top_boxes, top_levels, start = [], [], [], 0
    for level, n in enumerate(level_sizes):
        level_logits = logits[:, start : start + n]  # (B, n)
        value, idx = level_logits.topk(topk_size(level_logits, pre_nms_topk), dim=1)  # (B, k)
        idx = idx + start
        d = torch.gather(deltas, 1, idx[..., None].expand(-1, -1, 4))  # (B, k, 4)
        top_boxes.append(box_coder.decode(anchors[idx], d, box_coder.RPN_WEIGHTS))  # (B, k, 4)
        top_logits.append(value)
        top_levels.append(torch.full_like(idx, level))
        start += n
    boxes = clip_boxes(torch.cat(top_boxes, 1), image_sizes)  # (B, K, 4)
    # a floor above the exported NonMaxSuppression's score threshold (1e-9): a graph keeps what eager keeps
    scores = torch.cat(top_logits, 1).sigmoid().clamp(min=1e-6)  # (B, K)
    wide = boxes[..., 2:] - boxes[..., :2]  # (B, K, 2)
    scores = torch.where((wide >= min_size).all(-1), scores, torch.full_like(scores, -1.0))  # tiny: dropped
    kept = nms_topk(boxes, scores, torch.cat(top_levels, 1), nms_thresh, post_nms_topk, len(level_sizes))
    return kept["boxes"], kept["labels"] >= 0  # (B, P, 4), (B, P)
