"""Batching: images padded into one uint8 tensor, gt boxes padded into (B, M, 4) with label -1, so
that assignment and losses run over the whole batch at once.

Images sit at the top left and are padded right and bottom with `pad_value`, the model's mean, so that
padding is 0 after its normalisation. A letterbox is the keep-ratio resize plus a fixed square canvas
here, so the batch always knows each image's content size and its scale from the original pixels.

Naming: B = images, M = gt boxes per image (padded), H, W = the batch's padded size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from detcli.data.transforms import PAD_VALUE


def collate(samples: list, size_divisible: int = 32, pad_value: tuple = PAD_VALUE,
            canvas: tuple[int, int] | None = None) -> dict:
    """samples: (image uint8 (3, h, w), target {boxes (n, 4), labels (n,)}, meta with orig_size) per image.
    The batch is as large as its largest image, at least `canvas` (the letterbox square), rounded up to
    a multiple of `size_divisible`."""
    images, targets, metas = zip(*samples)
    B = len(images)
    sizes = torch.tensor([im.shape[-2:] for im in images], dtype=torch.long)  # (B, 2) content h, w
    orig = torch.tensor([m.get("orig_size", im.shape[-2:]) for im, m in zip(images, metas)],
                        dtype=torch.long)  # (B, 2) original h, w
    H, W = padded_size(int(sizes[:, 0].max()), int(sizes[:, 1].max()), size_divisible, canvas)
    M = max((len(t["labels"]) for t in targets), default=0)
    batch_images = torch.tensor(pad_value, dtype=torch.uint8).view(1, 3, 1, 1).repeat(B, 1, H, W)  # (B, 3, H, W)
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
        "image_sizes": sizes,  # (B, 2) h, w of the content (resized, unpadded): clip predictions to it
        "orig_sizes": orig,  # (B, 2) h, w of the original image
        # resized / original pixels per axis, as x, y, x, y: what the resize did to the boxes, so
        # dividing by it maps predictions back exactly
        "scale": (sizes / orig).flip(1).repeat(1, 2).float(),  # (B, 4)
        "meta": list(metas),
    }


def padded_size(h: int, w: int, size_divisible: int, canvas: tuple[int, int] | None = None) -> tuple[int, int]:
    """The input (H, W) content of (h, w) is padded to: at least `canvas`, rounded up to `size_divisible`."""
    least = canvas or (0, 0)
    return tuple(math.ceil(max(n, m) / size_divisible) * size_divisible for n, m in zip((h, w), least))


def canvas_size(image_size, letterbox: bool) -> tuple[int, int] | None:
    """The fixed (H, W) a letterbox pads to (int sizes only), else None (each batch its own size)."""
    return (int(image_size), int(image_size)) if letterbox and isinstance(image_size, int) else None


def pad_value(pixel_mean: Tensor) -> tuple[int, int, int]:
    """A model's `pixel_mean` (1, 3, 1, 1) on the 0-255 scale, as the RGB ints to pad with."""
    return tuple(round(v) for v in pixel_mean.flatten().tolist())


def rescale(batch: dict, side: int, base: int, size_divisible: int, pad_value: tuple) -> dict:
    """Multi-scale training (YOLOX): the whole padded batch resized by side / base (bilinear), its padded
    size rounded up to a multiple of `size_divisible`; boxes, content sizes and scales follow exactly."""
    H, W = batch["images"].shape[-2:]
    H2, W2 = (math.ceil(n * side / base / size_divisible) * size_divisible for n in (H, W))
    fy, fx = H2 / H, W2 / W
    images = F.interpolate(batch["images"].float(), size=(H2, W2), mode="bilinear", align_corners=False)
    sizes = (batch["image_sizes"] * torch.tensor([fy, fx])).round().long()  # (B, 2)
    pad = torch.tensor(pad_value, dtype=torch.float32).view(1, 3, 1, 1)
    rows = torch.arange(H2)[None, :, None] < sizes[:, 0, None, None]  # (B, H2, 1)
    cols = torch.arange(W2)[None, None, :] < sizes[:, 1, None, None]  # (B, 1, W2)
    images = torch.where((rows & cols)[:, None], images, pad)  # padding stays the pad value exactly
    factor = torch.tensor([fx, fy, fx, fy])
    return {**batch, "images": images.round().clamp(0, 255).to(torch.uint8), "boxes": batch["boxes"] * factor,
            "image_sizes": sizes, "scale": batch["scale"] * factor}


class Collate:
    """collate with fixed arguments, picklable for the loader's workers. `multiscale` = (lo, hi, base):
    each batch is rescaled to a side drawn from lo..hi (multiples of size_divisible) over base, the draw
    seeded by the batch's first sample (so a resumed run sees the same sizes)."""

    def __init__(self, size_divisible: int = 32, pad_value: tuple = PAD_VALUE,
                 canvas: tuple[int, int] | None = None, multiscale: tuple[int, int, int] | None = None):
        self.size_divisible, self.pad_value, self.canvas = size_divisible, tuple(pad_value), canvas
        self.multiscale = multiscale

    def __call__(self, samples: list) -> dict:
        batch = collate(samples, self.size_divisible, self.pad_value, self.canvas)
        seed = samples[0][2].get("seed")
        if self.multiscale is None or seed is None:
            return batch
        lo, hi, base = self.multiscale
        d = self.size_divisible
        sides = list(range(math.ceil(lo / d) * d, hi + 1, d)) or [base]
        side = sides[int(torch.randint(len(sides), (), generator=torch.Generator().manual_seed(seed + 1)))]
        return batch if side == base else rescale(batch, side, base, d, self.pad_value)
