"""Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017), as torchvision and detectron2 build it: an RPN
over every level proposes boxes, RoIAlign pools each proposal from its level among the `roi_strides`, two
FC layers and a predictor give class logits (background last) and class-specific box deltas.

The head predicts; the one thing it does besides is the second stage's input in training: the proposals
plus the gt boxes, matched (IoU 0.5) and sampled (512 per image, 25 % positive) by the matcher and the
sampler of detcli/assigners/max_iou.py, as the Detector contract hands it the targets for. The losses
live in detcli/losses/faster_rcnn.py, the decoding (FasterRCNNPostprocess) below, the shared NMS in
detcli/ops/nms.py.

Naming: B = images, L = levels, N = anchors over all levels, P = proposals per image, S = RoIs per image
(P in eval, the sampled ones in training), M = gt boxes per image, C = classes, F = FC width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detcli.assigners.max_iou import BalancedSampler, MaxIoUMatcher
from detcli.models.heads.rpn import RPNHead, select_proposals
from detcli.ops import box_coder
from detcli.ops.anchors import AnchorGrid
from detcli.ops.boxes import clip_boxes
from detcli.ops.nms import nms_topk
from detcli.ops.roi_align import MultiLevelRoIAlign, restore_order
from detcli.ops.tracing import in_graph, topk_size


class FasterRCNNHead(nn.Module):
    """forward(feats, targets, image_sizes) returns
      rpn_logits (B, N), rpn_deltas (B, N, 4), anchors (N, 4), rois (B, S, 4) and roi_valid (B, S),
      cls_logits (B, S, C + 1) with background last, box_deltas (B, S, C, 4) coded against the rois with
      box_coder.ROI_WEIGHTS; in training also roi_matched (B, S): the gt index of each sampled RoI, -1 for
      background.
    """

    def __init__(
        self,
        in_channels: int | list[int],
        strides: list[int],
        num_classes: int,
        anchor_sizes: list = (32, 64, 128, 256, 512),
        aspect_ratios: list[float] = (0.5, 1.0, 2.0),
        pre_nms_topk: dict | None = None,
        post_nms_topk: dict | None = None,
        rpn_nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        roi_strides: list[int] = (4, 8, 16, 32),
        roi_output_size: int = 7,
        sampling_ratio: int = 2,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        fc_dim: int = 1024,
        roi_matcher: nn.Module | None = None,
        roi_sampler: nn.Module | None = None,
    ):
        super().__init__()
        channels = set([in_channels] if isinstance(in_channels, int) else in_channels)
        if len(channels) != 1:
            raise ValueError(f"head=faster_rcnn needs one width on every neck level (a shared RPN conv), got {sorted(channels)}")
        channels = channels.pop()
        missing = [s for s in roi_strides if s not in strides]
        if missing:
            raise ValueError(f"head.roi_strides {list(roi_strides)}: the neck has no level of stride {missing} "
                             f"(its strides: {list(strides)})")
        self.num_classes = num_classes
        self.strides = list(strides)
        self.roi_levels = [self.strides.index(s) for s in roi_strides]
        self.anchors = AnchorGrid(self.strides, list(anchor_sizes), list(aspect_ratios))
        self.rpn = RPNHead(channels, self.anchors.num_anchors)
        self.pre_nms_topk = {"train": 2000, "test": 1000, **(pre_nms_topk or {})}
        self.post_nms_topk = {"train": 1000, "test": 1000, **(post_nms_topk or {})}
        self.rpn_nms_thresh, self.min_size = rpn_nms_thresh, min_size
        self.roi_align = MultiLevelRoIAlign(list(roi_strides), roi_output_size, sampling_ratio, canonical_scale,
                                            canonical_level)
        self.box_head = nn.Sequential(
            nn.Flatten(1), nn.Linear(channels * roi_output_size**2, fc_dim), nn.ReLU(inplace=True),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True),
        )
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, num_classes * 4)
        for layer in self.box_head:  # detectron2's c2_xavier_fill; predictor std 0.01 / 0.001
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=1)
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.roi_matcher = roi_matcher or MaxIoUMatcher(0.5, 0.5, allow_low_quality=False)
        self.roi_sampler = roi_sampler or BalancedSampler(512, 0.25)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, feats: list[Tensor], targets: dict | None = None,
                image_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """feats: one (B, c, h, w) per stride; image_sizes (B, 2) as (h, w) of the content (default the
        padded input); targets (training): boxes (B, M, 4), labels (B, M) with -1 = padding."""
        sizes = [tuple(f.shape[-2:]) for f in feats]
        if image_sizes is None:
            image_sizes = torch.tensor(sizes[0], device=feats[0].device).expand(feats[0].shape[0], 2) * self.strides[0]
        rpn_logits, rpn_deltas = self.rpn(feats)  # (B, N), (B, N, 4)
        priors = self.priors(sizes, feats[0].device)
        anchors = priors["anchors"]  # (N, 4)
        mode = "train" if self.training else "test"
        rois, roi_valid = select_proposals(rpn_logits, rpn_deltas, anchors, priors["level_sizes"], image_sizes,
                                           self.pre_nms_topk[mode], self.post_nms_topk[mode], self.rpn_nms_thresh,
                                           self.min_size)  # (B, P, 4), (B, P)
        out = {"rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "anchors": anchors}
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNNHead: the targets are needed in training, to sample the RoIs")
            rois, roi_valid, out["roi_matched"] = self.sample_rois(rois, roi_valid, targets)
        elif not in_graph():
            # eval: the valid proposals come first; drop the columns no image fills (a traced graph keeps P)
            keep = max(1, int(roi_valid.sum(1).max()))
            rois, roi_valid = rois[:, :keep], roi_valid[:, :keep]  # (B, S, 4), (B, S)
        roi_feats = [feats[i] for i in self.roi_levels]
        if self.grad_checkpointing and self.training:
            cls_logits, box_deltas = checkpoint(self._second_stage, rois, *roi_feats, use_reentrant=False)
        else:
            cls_logits, box_deltas = self._second_stage(rois, *roi_feats)
        return {**out, "rois": rois, "roi_valid": roi_valid, "cls_logits": cls_logits, "box_deltas": box_deltas}

    def class_layout(self) -> dict[str, tuple[int, int]]:
        """The parameters whose first axis runs over the classes (see Head.class_layout): the class logits with
        the background row last, the class-specific box deltas 4 rows a class."""
        return {"cls_score.weight": (1, 1), "cls_score.bias": (1, 1), "bbox_pred.weight": (4, 0),
                "bbox_pred.bias": (4, 0)}

    def priors(self, sizes: list[tuple[int, int]], device) -> dict:
        """The constants of the feature sizes [(h, w)] per level: anchors (N, 4) and the anchors per level [L]."""
        return {"anchors": self.anchors(sizes, device),
                "level_sizes": [h * w * self.anchors.num_anchors for h, w in sizes]}

    def _second_stage(self, rois: Tensor, *feats: Tensor) -> tuple[Tensor, Tensor]:
        S = rois.shape[1]
        pooled, order = self.roi_align(list(feats), rois)  # (B*S, A, P, P), level-sorted on CPU
        # pooled in fp32; the box head in the features' dtype (fp16 in an `export.half=true` model)
        x = restore_order(self.box_head(pooled.to(feats[0].dtype)), order)  # (B*S, F), image-major
        # reshape, not unflatten: the ONNX exporter writes unflatten's -1 as the traced batch
        cls_logits = self.cls_score(x).reshape(-1, S, self.num_classes + 1)  # (B, S, C + 1)
        box_deltas = self.bbox_pred(x).reshape(-1, S, self.num_classes, 4)  # (B, S, C, 4)
        return cls_logits, box_deltas

    @torch.no_grad()
    def sample_rois(self, proposals: Tensor, valid: Tensor, targets: dict) -> tuple[Tensor, Tensor, Tensor]:
        """The proposals (B, P, 4) plus the gt boxes, matched and sampled: rois (B, S, 4), valid (B, S),
        matched gt (B, S) with -1 = background."""
        gt_boxes, gt_valid = targets["boxes"].float(), targets["labels"] >= 0  # (B, M, 4), (B, M)
        boxes = torch.cat([proposals, gt_boxes], 1)  # (B, P + M, 4)
        valid = torch.cat([valid, gt_valid], 1)  # (B, P + M)
        matched = self.roi_matcher(gt_boxes, gt_valid, boxes)  # (B, P + M)
        pos, neg = self.roi_sampler(matched, valid)  # (B, P + M) each
        S = min(self.roi_sampler.num_per_image, boxes.shape[1])
        taken, idx = (pos | neg).float().topk(S, dim=1)  # (B, S): the sampled first
        rois = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))  # (B, S, 4)
        matched = torch.gather(torch.where(pos, matched, torch.full_like(matched, -1)), 1, idx)  # (B, S)
        return rois, taken > 0, matched


class FasterRCNNPostprocess(nn.Module):
    """Softmax scores, the class-specific boxes decoded against the RoIs and clipped, candidates above
    `score_thresh` and at least `min_size` wide and high (the best `topk_candidates` of them when set: none by
    default, as torchvision and detectron2), class-wise NMS, `max_det` per image, box voting with `vote_iou`;
    the same fixed-shape output as the one-stage heads."""

    def __init__(self, num_classes: int, score_thresh: float = 0.05, nms_thresh: float = 0.5, max_det: int = 100,
                 min_size: float = 1e-2, topk_candidates: int | None = None, vote_iou: float | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.score_thresh, self.nms_thresh, self.max_det = score_thresh, nms_thresh, max_det
        self.min_size, self.topk_candidates, self.vote_iou = min_size, topk_candidates, vote_iou

    def decode(self, preds: dict) -> tuple[Tensor, Tensor]:
        """Softmax scores (B, S, C) without the background, 0 for padded RoIs, and the class-specific boxes
        (B, S, C, 4) x1y1x2y2 in input pixels, decoded against the RoIs."""
        scores = F.softmax(preds["cls_logits"].float(), dim=-1)[..., : self.num_classes]  # (B, S, C)
        scores = scores * preds["roi_valid"][..., None]
        rois = preds["rois"].float()  # (B, S, 4)
        boxes = box_coder.decode(rois[:, :, None], preds["box_deltas"].float(), box_coder.ROI_WEIGHTS)  # (B, S, C, 4)
        return scores, boxes

    def scores_and_boxes(self, preds: dict) -> tuple[Tensor, Tensor]:
        """The decoding as the one-stage heads give it (`detcli export export.nms=false`): one row per (RoI,
        class) box, R = S*C, scores (B, R, C) holding that class's score alone (0 elsewhere) and boxes (B, R, 4);
        class-wise NMS over them gives what `forward` does, before its threshold and clipping."""
        scores, boxes = self.decode(preds)  # (B, S, C), (B, S, C, 4)
        one_hot = torch.eye(self.num_classes, dtype=scores.dtype, device=scores.device)  # (C, C)
        return (scores[..., None] * one_hot).flatten(1, 2), boxes.flatten(1, 2)  # (B, S*C, C), (B, S*C, 4)

    def forward(self, preds: dict, image_sizes: Tensor) -> dict[str, Tensor]:
        C = self.num_classes
        scores, boxes = self.decode(preds)  # (B, S, C), (B, S, C, 4)
        boxes = clip_boxes(boxes.flatten(1, 2), image_sizes)  # (B, S*C, 4)
        wide = boxes[..., 2:] - boxes[..., :2]  # (B, S*C, 2)
        scores = scores.flatten(1)  # (B, S*C)
        # padded RoIs have score 0, never above the threshold
        keep = (scores > self.score_thresh) & (wide >= self.min_size).all(-1)  # (B, S*C)
        scores = torch.where(keep, scores, torch.full_like(scores, -1.0))
        if self.topk_candidates:
            scores, idx = scores.topk(topk_size(scores, self.topk_candidates), dim=1)  # (B, K)
            boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))  # (B, K, 4)
        else:
            idx = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)  # (B, S*C)
        return nms_topk(boxes, scores, idx % C, self.nms_thresh, self.max_det, C, self.vote_iou)
