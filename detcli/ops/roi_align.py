"""RoIAlign over a feature pyramid, as torchvision's MultiScaleRoIAlign does it: each box pooled from the
level k = floor(k0 + log2(sqrt(area) / canonical_scale)) (FPN paper, eq. 1; torchvision's LevelMapper),
clamped to the levels given, with torchvision.ops.roi_align (aligned=False, as torchvision's Faster R-CNN).

Why not MultiScaleRoIAlign itself: its forward takes a Python list of per-image boxes and writes the
image index with a loop over that list, which freezes the batch size into an exported graph. Here the
boxes are one (B, S, 4) tensor and the image index a tensor too, so the batch axis stays dynamic.

On CPU, torchvision's roi_align kernels run on one thread: its backward, which scatters into the
feature gradient, took a third of a Faster R-CNN training step at 256 px on 2 cores. The gradient of each
channel depends on that channel alone, so `_ThreadedRoIAlign` runs torchvision's own backward kernel on
channel slices, and its forward on slices of the boxes, in torch.get_num_threads() threads: the same
numbers, bit for bit, in about half the time on 2 cores.

Naming: B = images, S = boxes per image, K = B x S, A = channels, P = output side.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

_POOL: dict[int, ThreadPoolExecutor] = {}


def _threads() -> tuple[int, ThreadPoolExecutor]:
    threads = torch.get_num_threads()
    return threads, _POOL.setdefault(threads, ThreadPoolExecutor(threads, thread_name_prefix="roi_align"))


class _ThreadedRoIAlign(torch.autograd.Function):
    """roi_align (aligned=False) on CPU: forward on slices of the boxes, backward on slices of the channels,
    each slice in its own thread (torchvision's kernels, which release the GIL)."""

    @staticmethod
    def forward(ctx, feat: Tensor, rois: Tensor, output_size: int, scale: float, sampling_ratio: int) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.shape, ctx.args = feat.shape, (output_size, scale, sampling_ratio)
        threads, pool = _threads()

        def one(r: Tensor) -> Tensor:  # (k, A, P, P) for a slice of the boxes
            return roi_align(feat, r, output_size, scale, sampling_ratio, aligned=False)

        return torch.cat(list(pool.map(one, rois.chunk(threads)))) if len(rois) >= 2 * threads else one(rois)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        B, _, H, W = ctx.shape
        P, scale, ratio = ctx.args
        threads, pool = _threads()

        def one(g: Tensor) -> Tensor:  # torchvision's kernel on a slice of the channels
            return torch.ops.torchvision._roi_align_backward(g.contiguous(), rois, scale, P, P, B, g.shape[1], H, W,
                                                               ratio, False)

        return torch.cat(list(pool.map(one, grad.chunk(threads, dim=1))), 1), None, None, None, None


class MultiLevelRoIAlign(nn.Module):
    def __init__(self, strides: list[int], output_size: int = 7, sampling_ratio: int = 2,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(k != int(k) for k in levels) or levels != sorted(levels):
            raise ValueError(f"RoIAlign levels need increasing power-of-two strides, got {list(strides)}")
        self.strides = list(strides)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.mapper = LevelMapper(int(levels[0]), int(levels[-1]), canonical_scale, canonical_level)

    def forward(self, feats: list[Tensor], boxes: Tensor) -> Tensor:
        """feats: one (B, A, h, w) map per stride; boxes (B, S, 4) x1y1x2y2 in input pixels ->
        pooled (K, A, P, P), image-major."""
        B, S = boxes.shape[:2]
        flat = boxes.reshape(-1, 4).float()  # (K, 4): fp32 coordinates even under AMP (bf16 would round to 4 px)
        image = torch.arange(B, device=boxes.device, dtype=flat.dtype).repeat_interleave(S)  # (K,)
        rois = torch.cat([image[:, None], flat], dim=1)  # (K, 5) as roi_align takes them
        levels = self.mapper([flat])  # (K,)
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        shape = (flat.shape[0], feats[0].shape[1], self.output_size, self.output_size)
        # every box is pooled from exactly one level, so every row is written: no zero fill (but in a graph)
        out = flat.new_zeros(shape) if tracing else flat.new_empty(shape)  # (K, A, P, P)
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(levels == level)[0]  # (k,)
            feat = feat.float()  # fp32, as torchvision's autocast rule for roi_align runs it anyway
            if feat.device.type == "cpu" and not tracing:
                pooled = _ThreadedRoIAlign.apply(feat, rois[idx], self.output_size, 1.0 / stride,
                                                 self.sampling_ratio)  # (k, A, P, P)
            else:
                pooled = roi_align(feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio, aligned=False)
            # in place (no copy of the whole output per level), except in a traced graph
            out = out.index_put((idx,), pooled) if tracing else out.index_put_((idx,), pooled)
        return out
