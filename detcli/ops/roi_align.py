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
numbers, bit for bit, in about half the time on 2 cores. It pools the boxes sorted by level into one
output (no per-level scatter of the large pooled tensor): the caller puts its much smaller results back
in order with the `order` it returns.

Naming: B = images, S = boxes per image, K = B x S, A = channels, P = output side.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

_POOL: dict[int, ThreadPoolExecutor] = {}


def _threads() -> tuple[int, ThreadPoolExecutor]:
    threads = torch.get_num_threads()
    if threads not in _POOL:
        _POOL[threads] = ThreadPoolExecutor(threads, thread_name_prefix="roi_align")
    return threads, _POOL[threads]


def _backward_slice(grad: Tensor, rois: Tensor, scale: float, output_size: int, shape, sampling_ratio: int) -> Tensor:
    """torchvision's roi_align backward kernel for a slice of the channels: (k, a, P, P) -> (B, a, H, W)."""
    B, _, H, W = shape
    return torch.ops.torchvision._roi_align_backward(grad.contiguous(), rois, scale, output_size, output_size, B,
                                                       grad.shape[1], H, W, sampling_ratio, False)


class _ThreadedRoIAlign(torch.autograd.Function):
    """roi_align (aligned=False) of level-sorted boxes over several levels, on CPU threads: the forward on
    slices of each level's boxes, the backward on slices of the channels (torchvision's kernels, which
    release the GIL). rois (K, 5) sorted by level, counts[l] of them on level l -> (K, A, P, P)."""

    @staticmethod
    def forward(ctx, rois: Tensor, counts: list[int], output_size: int, scales: list[float], sampling_ratio: int,
                *feats: Tensor) -> Tensor:
        threads, pool = _threads()
        out = rois.new_empty(rois.shape[0], feats[0].shape[1], output_size, output_size)  # (K, A, P, P)
        jobs, start = [], 0
        for feat, scale, n in zip(feats, scales, counts):
            feat = feat.contiguous()  # once per level (the kernel would copy a channels-last map in every job)
            jobs += [(feat, r, scale, o) for r, o in zip(rois[start : start + n].chunk(threads),
                                                          out[start : start + n].chunk(threads))]
            start += n
        ctx.save_for_backward(rois)
        ctx.counts, ctx.args, ctx.shapes = counts, (output_size, scales, sampling_ratio), [f.shape for f in feats]

        @torch.no_grad()  # grad mode is per thread: no autograd records in the workers
        def one(job) -> None:
            feat, r, scale, o = job  # each worker copies its result into its rows (no single-threaded concat)
            o.copy_(roi_align(feat, r, output_size, scale, sampling_ratio, aligned=False))

        list(pool.map(one, jobs))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        P, scales, ratio = ctx.args
        threads, pool = _threads()
        grads, start = [], 0
        for level, (shape, scale, n) in enumerate(zip(ctx.shapes, scales, ctx.counts)):
            if n == 0 or not ctx.needs_input_grad[5 + level]:
                grads.append(None if not ctx.needs_input_grad[5 + level] else grad.new_zeros(shape))
                start += n
                continue
            r, g = rois[start : start + n], grad[start : start + n]  # this level's boxes and their gradient
            backward = partial(_backward_slice, rois=r, scale=scale, output_size=P, shape=shape, sampling_ratio=ratio)
            grads.append(torch.cat(list(pool.map(backward, g.chunk(threads, dim=1))), 1))
            start += n
        return (None, None, None, None, None, *grads)


class MultiLevelRoIAlign(nn.Module):
    def __init__(self, strides: list[int], output_size: int = 7, sampling_ratio: int = 2,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(k != int(k) for k in levels) or levels != list(range(int(levels[0]), int(levels[0]) + len(levels))):
            raise ValueError(f"head.roi_strides: RoIAlign needs consecutive pyramid levels (strides doubling from one "
                             f"to the next, e.g. [4, 8, 16, 32]), got {list(strides)}")
        self.strides = list(strides)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.mapper = LevelMapper(int(levels[0]), int(levels[-1]), canonical_scale, canonical_level)

    def forward(self, feats: list[Tensor], boxes: Tensor) -> tuple[Tensor, Tensor | None]:
        """feats: one (B, A, h, w) map per stride; boxes (B, S, 4) x1y1x2y2 in input pixels -> pooled
        (K, A, P, P) and order (K,): row i of pooled is box order[i] of the image-major flattening; order is
        None when pooled is already image-major (on GPUs and in traced graphs)."""
        B, S = boxes.shape[:2]
        flat = boxes.reshape(-1, 4).float()  # (K, 4): fp32 coordinates even under AMP (bf16 would round to 4 px)
        image = torch.arange(B, device=boxes.device, dtype=flat.dtype).repeat_interleave(S)  # (K,)
        rois = torch.cat([image[:, None], flat], dim=1)  # (K, 5) as roi_align takes them
        levels = self.mapper([flat])  # (K,)
        feats = [f.float() for f in feats]  # fp32, as torchvision's autocast rule for roi_align runs it anyway
        scales = [1.0 / s for s in self.strides]
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if feats[0].device.type == "cpu" and not tracing:
            order = levels.argsort(stable=True)  # (K,)
            counts = torch.bincount(levels, minlength=len(feats)).tolist()
            return _ThreadedRoIAlign.apply(rois[order], counts, self.output_size, scales, self.sampling_ratio,
                                           *feats), order
        out = flat.new_zeros(flat.shape[0], feats[0].shape[1], self.output_size, self.output_size)  # (K, A, P, P)
        for level, (feat, scale) in enumerate(zip(feats, scales)):
            idx = torch.where(levels == level)[0]  # (k,)
            pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, aligned=False)
            out = out.index_put((idx,), pooled)  # (k, A, P, P) into their rows
        return out, None


def restore_order(x: Tensor, order: Tensor | None) -> Tensor:
    """Rows of x (K, ...) computed in MultiLevelRoIAlign's `order`, put back image-major."""
    return x if order is None else torch.empty_like(x).index_copy_(0, order, x)
