"""RoIAlign over a feature pyramid, as torchvision's MultiScaleRoIAlign does it: each box pooled from the
level k = floor(k0 + log2(sqrt(area) / canonical_scale)) (FPN paper, eq. 1; torchvision's LevelMapper),
clamped to the levels given, with torchvision.ops.roi_align (aligned=False, as torchvision's Faster R-CNN).

Why not MultiScaleRoIAlign itself: its forward takes a Python list of per-image boxes and writes the
image index with a loop over that list, which freezes the batch size into an exported graph. Here the
boxes are one (B, S, 4) tensor and the image index a tensor too, so the batch axis stays dynamic.

Naming: B = images, S = boxes per image, K = B x S, A = channels, P = output side.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper


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
        out = flat.new_zeros(flat.shape[0], feats[0].shape[1], self.output_size, self.output_size)  # (K, A, P, P)
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(levels == level)[0]  # (k,)
            # in fp32, as torchvision's autocast rule for roi_align runs it anyway
            pooled = roi_align(feat.float(), rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio,
                               aligned=False)  # (k, A, P, P)
            out = out.index_put((idx,), pooled)
        return out
