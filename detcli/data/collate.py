"""Batching: images padded into one uint8 tensor, gt boxes padded into (B, M, 4) with label -1, so
that assignment and losses run over the whole batch at once."""

from __future__ import annotations

import math

import torch


def collate(samples: list, size_divisible: int = 32) -> dict:
    """samples: (image uint8 (3, h, w), target {boxes (n, 4), labels (n,)}, meta dict) per image."""
    images, targets, metas = zip(*samples)
    B = len(images)
    H = math.ceil(max(im.shape[-2] for im in images) / size_divisible) * size_divisible
    W = math.ceil(max(im.shape[-1] for im in images) / size_divisible) * size_divisible
    M = max((len(t["labels"]) for t in targets), default=0)
    batch_images = torch.zeros(B, 3, H, W, dtype=torch.uint8)
    boxes = torch.zeros(B, M, 4, dtype=torch.float32)
    labels = torch.full((B, M), -1, dtype=torch.long)
    for i, (im, t) in enumerate(zip(images, targets)):
        batch_images[i, :, : im.shape[-2], : im.shape[-1]] = im
        n = len(t["labels"])
        boxes[i, :n] = t["boxes"].as_subclass(torch.Tensor).float()
        labels[i, :n] = t["labels"]
    return {
        "images": batch_images,  # (B, 3, H, W) uint8
        "boxes": boxes,  # (B, M, 4) x1y1x2y2 in resized pixels
        "labels": labels,  # (B, M) contiguous labels, -1 = padding
        "image_sizes": torch.tensor([im.shape[-2:] for im in images], dtype=torch.long),  # (B, 2) h, w
        "meta": list(metas),
    }
