"""Box-aware transforms (torchvision.transforms.v2 with tv_tensors), and YOLOX-style mosaic / mixup.

A pipeline from config (`data.train_transforms: [{_target_: torchvision.transforms.v2....}, ...]`)
replaces the default one (flip + keep-ratio resize); box clamping and SanitizeBoundingBoxes always end
the training pipeline, so a crop or an affine never leaves an empty or out-of-image box.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

PAD_VALUE = 114  # the grey YOLOX pads with


def resize(image_size) -> v2.Transform:
    """Keep-ratio resize. int N: the longer side becomes N; [short, max]: the shorter side becomes
    `short` unless the longer side would pass `max` (the detectron2 / FCOS 800x1333 rule)."""
    if isinstance(image_size, int):
        return v2.Resize(size=None, max_size=int(image_size), antialias=True)
    short, longest = (int(v) for v in image_size)
    return v2.Resize(size=short, max_size=longest, antialias=True)


class Letterbox(v2.Transform):
    """Keep-ratio resize so the longer side is `size`, then pad right and bottom to size x size."""

    def __init__(self, size: int, fill: int = PAD_VALUE):
        super().__init__()
        self.resize = v2.Resize(size=None, max_size=int(size), antialias=True)
        self.size, self.fill = int(size), fill

    def forward(self, *inputs):
        out = self.resize(*inputs)
        h, w = v2.query_size(out if isinstance(out, tuple) else (out,))
        return v2.Pad([0, 0, self.size - w, self.size - h], fill=self.fill)(out)


def sizing(image_size, letterbox: bool) -> v2.Transform:
    """Letterbox (int sizes only) or the keep-ratio resize."""
    return Letterbox(image_size) if letterbox and isinstance(image_size, int) else resize(image_size)


def finish() -> list[v2.Transform]:
    return [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)]


def train_transforms(image_size, hflip: float = 0.5, steps: list | None = None, letterbox: bool = False):
    if steps:  # the user's pipeline, instantiated by Hydra
        return v2.Compose(list(steps) + finish())
    flip = [v2.RandomHorizontalFlip(p=hflip)] if hflip > 0 else []
    return v2.Compose(flip + [sizing(image_size, letterbox)] + finish())


def val_transforms(image_size, steps: list | None = None, letterbox: bool = False):
    if steps:
        return v2.Compose(list(steps))
    return v2.Compose([sizing(image_size, letterbox)])


def mosaic(samples: list[tuple], side: int, g: torch.Generator) -> tuple:
    """Four (image uint8 (3, h, w), boxes (n, 4), labels (n,)) around a random centre of a
    2*side canvas (each image's longer side resized to `side`), then a random scale / translate."""
    canvas = torch.full((3, 2 * side, 2 * side), PAD_VALUE, dtype=torch.uint8)
    cx, cy = (torch.rand(2, generator=g) * side + side / 2).long().tolist()
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(samples):
        h, w = image.shape[-2:]
        scale = side / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        image = F.resize(image, [h, w], antialias=True)
        x0 = cx - w if k in (0, 2) else cx  # top-left, top-right, bottom-left, bottom-right of the centre
        y0 = cy - h if k in (0, 1) else cy
        X1, Y1, X2, Y2 = max(x0, 0), max(y0, 0), min(x0 + w, 2 * side), min(y0 + h, 2 * side)
        canvas[:, Y1:Y2, X1:X2] = image[:, Y1 - y0 : Y2 - y0, X1 - x0 : X2 - x0]
        shifted = boxes * scale + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        all_boxes.append(torch.maximum(torch.minimum(shifted, torch.tensor([X2, Y2, X2, Y2])),
                                       torch.tensor([X1, Y1, X1, Y1])))
        all_labels.append(labels)
    target = {"boxes": tv_tensors.BoundingBoxes(torch.cat(all_boxes), format="XYXY", canvas_size=(2 * side,) * 2),
              "labels": torch.cat(all_labels)}
    affine = v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.5, 1.5), fill=PAD_VALUE)
    image, target = v2.Compose([affine, v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2)])(
        tv_tensors.Image(canvas), target)
    return image.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor), target["labels"]


def mixup(a: tuple, b: tuple) -> tuple:
    """Half of each image (b resized to a's size), the boxes of both."""
    (ia, ba, la), (ib, bb, lb) = a, b
    h, w = ia.shape[-2:]
    sy, sx = h / ib.shape[-2], w / ib.shape[-1]
    ib = F.resize(ib, [h, w], antialias=True)
    image = ((ia.float() + ib.float()) / 2).round().to(torch.uint8)
    return image, torch.cat([ba, bb * torch.tensor([sx, sy, sx, sy])]), torch.cat([la, lb])
