"""The NMS every head shares, for the whole batch at once: class-wise NMS inside each image, the best
`max_det` per image, and box voting after it. The output has a fixed shape, (B, max_det) per image padded
with score 0 and label -1, so the same code runs in training-time evaluation, predict and the exported ONNX
graph (a single NonMaxSuppression node there).

Naming: B = images, C = classes, K = candidates per image, D = max_det, N = kept (image, class, box) rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from detcli.ops.boxes import batched_box_iou
from detcli.ops.tracing import in_graph


class BatchedNMS(torch.autograd.Function):
    """NMS inside every (image, class) group of dense scores: a single ONNX NonMaxSuppression node (batch-
    and class-aware, so the exported graph never compares boxes of different images) when exported,
    torchvision's batched_nms when traced for TorchScript. Eager code calls batched_nms on the candidates.

    boxes (B, K, 4), class_scores (B, C, K) with 0 for "not a candidate" -> selected (N, 3) as
    (image, class, box) index rows, like ONNX's NonMaxSuppression.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, class_scores: Tensor, iou: float) -> Tensor:
        C = class_scores.shape[1]
        b, c, k = (class_scores > 0).nonzero(as_tuple=True)  # (N,) each
        # compact group ids: torchvision may shift boxes by id * max coordinate (large ids lose fp32 precision)
        keep = batched_nms(boxes[b, k], class_scores[b, c, k], b * C + c, iou)
        return torch.stack([b[keep], c[keep], k[keep]], dim=1)

    @staticmethod
    def symbolic(g, boxes, class_scores, iou: float):
        max_per_class = g.op("Constant", value_t=torch.tensor([1 << 30], dtype=torch.int64))
        iou_t = g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32))
        thresh = g.op("Constant", value_t=torch.tensor([1e-9], dtype=torch.float32))
        # x1y1x2y2 works with center_point_box=0: IoU does not depend on which axis comes first
        return g.op("NonMaxSuppression", boxes, class_scores, max_per_class, iou_t, thresh)


def nms_topk(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_det: int,
             num_classes: int, vote_iou: float | None = None) -> dict[str, Tensor]:
    """Class-wise NMS inside each image, then the best `max_det` per image; with `vote_iou`, each kept box
    moved to the score-weighted mean of the candidates of its class overlapping it by IoU >= vote_iou
    (box voting, `vote_boxes`).

    boxes (B, K, 4), scores (B, K) with invalid candidates < 0, labels (B, K) in [0, C).
    """
    B, K = scores.shape
    all_boxes, all_scores, all_labels = boxes, scores, labels  # (B, K, 4), (B, K), (B, K): the voters
    if in_graph():  # a graph: dense (B, C, K) scores, as ONNX's NMS
        class_scores = torch.zeros(B, num_classes, K, dtype=scores.dtype, device=scores.device)
        class_scores.scatter_(1, labels[:, None, :], scores.clamp(min=0)[:, None, :])  # (B, C, K)
        if torch.onnx.is_in_onnx_export():
            selected = BatchedNMS.apply(boxes, class_scores, float(iou))  # (N, 3)
        else:  # TorchScript: trace the ops inside
            selected = BatchedNMS.forward(None, boxes, class_scores, float(iou))
        b, k = selected[:, 0], selected[:, 2]
    else:  # eager: the candidates alone (a two-stage head has S x C of them, most below the threshold)
        b, k = (scores > 0).nonzero(as_tuple=True)  # (N,) each, image-major
        cand_boxes, cand_scores, groups = boxes[b, k], scores[b, k], labels[b, k]  # (N, 4), (N,), (N,)
        # one call per image: NMS kernels visit every pair of their boxes (torchvision's CUDA kernel keeps them
        # in one serial pass), so B calls of N / B boxes cost about 1 / B of one call over the batch
        keep, start = [], 0
        for n in torch.bincount(b, minlength=B).tolist():
            keep.append(batched_nms(cand_boxes[start : start + n], cand_scores[start : start + n],
                                    groups[start : start + n], iou) + start)
            start += n
        keep = torch.cat(keep)  # (N',)
        b, k = b[keep], k[keep]
    kept_scores = torch.full_like(scores, -1.0).index_put((b, k), scores[b, k])  # (B, K), -1 = dropped
    if in_graph():  # K follows the input size there: max_det dropped columns first, so that K >= max_det
        kept_scores = F.pad(kept_scores, (0, max_det), value=-1.0)  # (B, K + D)
        boxes, labels = F.pad(boxes, (0, 0, 0, max_det)), F.pad(labels, (0, max_det))
        K = K + max_det
    top_scores, top_idx = kept_scores.topk(min(max_det, K), dim=1)  # (B, D)
    if top_idx.shape[1] < max_det:  # fewer candidates than max_det: pad, so the output keeps its shape
        top_scores = F.pad(top_scores, (0, max_det - top_idx.shape[1]), value=-1.0)
        top_idx = F.pad(top_idx, (0, max_det - top_idx.shape[1]))
    found = top_scores >= 0
    top_boxes = torch.gather(boxes, 1, top_idx[..., None].expand(-1, -1, 4))  # (B, D, 4)
    if vote_iou is not None:
        top_boxes = vote_boxes(top_boxes, torch.gather(labels, 1, top_idx), all_boxes, all_scores, all_labels,
                               vote_iou)
    return {
        "boxes": top_boxes * found[..., None],
        "scores": top_scores.clamp(min=0),
        "labels": torch.where(found, torch.gather(labels, 1, top_idx), torch.full_like(top_idx, -1)),
    }


def vote_boxes(kept: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor,
               vote_iou: float) -> Tensor:
    """Box voting: each kept box becomes the mean of the candidates of its class (itself included) that
    overlap it by IoU >= vote_iou, weighted by score x IoU (YOLOv5's merge-NMS weights). Batched, plain
    tensor ops, so it exports as it runs.

    kept (B, D, 4), kept_labels (B, D); boxes (B, K, 4), scores (B, K) (< 0: not a candidate), labels (B, K).
    """
    if not in_graph():  # eager: the voters compacted to the candidates (a two-stage head has S x C, most not)
        scores, idx = scores.topk(max(int((scores > 0).sum(1).max()), 1), dim=1)  # (B, K')
        boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))  # (B, K', 4)
        labels = torch.gather(labels, 1, idx)  # (B, K')
    overlap = batched_box_iou(kept, boxes)  # (B, D, K)
    same = (kept_labels[:, :, None] == labels[:, None, :]) & (scores[:, None, :] > 0)  # (B, D, K)
    weights = torch.where(same & (overlap >= vote_iou), overlap * scores[:, None, :], torch.zeros_like(overlap))
    total = weights.sum(2, keepdim=True)  # (B, D, 1)
    # a sum of products, not bmm: autocast would run bmm in bf16 / fp16 and round the coordinates (1 px at 256)
    voted = (weights[..., None] * boxes[:, None]).sum(2) / total.clamp(min=1e-12)  # (B, D, 4)
    return torch.where(total > 0, voted, kept)
