"""Box-aware transforms (torchvision.transforms.v2 with tv_tensors)."""

from __future__ import annotations

from torchvision.transforms import v2


def resize(image_size) -> v2.Transform:
    """Keep-ratio resize. int N: the longer side becomes N; [short, max]: the shorter side becomes
    `short` unless the longer side would pass `max` (the detectron2 / FCOS 800x1333 rule)."""
    if isinstance(image_size, int):
        return v2.Resize(size=None, max_size=int(image_size), antialias=True)
    short, longest = (int(v) for v in image_size)
    return v2.Resize(size=short, max_size=longest, antialias=True)


def train_transforms(image_size, hflip: float = 0.5) -> v2.Transform:
    steps = [v2.RandomHorizontalFlip(p=hflip)] if hflip > 0 else []
    return v2.Compose(steps + [resize(image_size), v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)])


def val_transforms(image_size) -> v2.Transform:
    return v2.Compose([resize(image_size)])
