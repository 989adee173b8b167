"""The detector: backbone -> neck -> head, with a criterion for training and a postprocess for inference.

One interface for every head: `model(images, targets)` returns a dict of named losses in training;
`model(images, image_sizes=...)` returns fixed-shape detections (boxes, scores, labels) in eval.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Detector(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, criterion: nn.Module,
                 postprocess: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.criterion = criterion
        self.postprocess = postprocess
        # images come in as 0-255 pixels (uint8 or float); normalisation is part of the model, so an
        # exported graph takes raw pixels too
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: Tensor, targets: dict | None = None, image_sizes: Tensor | None = None):
        """images (B, 3, H, W) in 0-255; targets: boxes (B, M, 4) and labels (B, M) padded with -1;
        image_sizes (B, 2) as (h, w) of the unpadded content (default: H, W)."""
        preds = self.predict(images)
        if self.training:
            if targets is None:
                raise ValueError("Detector.forward: targets are needed in training mode")
            return self.criterion(preds, targets)
        if image_sizes is None:
            image_sizes = torch.tensor(images.shape[-2:], device=images.device).expand(images.shape[0], 2)
        return self.postprocess(preds, image_sizes)

    def predict(self, images: Tensor) -> dict:
        """Raw head outputs for normalised images."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if images.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.neck(self.backbone(x)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for part in (self.backbone, self.neck, self.head):
            part.set_grad_checkpointing(enable)
