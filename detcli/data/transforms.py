"""Box-aware transforms (torchvision.transforms.v2 with tv_tensors), and YOLOX-style mosaic / mixup.

A pipeline from config (`data.train_transforms: [{_target_: torchvision.transforms.v2....}, ...]`)
replaces the default one (flip + keep-ratio resize); box clamping and SanitizeBoundingBoxes always end
the training pipeline, so a crop or an affine never leaves an empty or out-of-image box. Nothing here
pads: the collate pads every batch (to the letterbox square when asked) and keeps the content size.

Naming: n = boxes of an image, s = side (the mosaic's output size).
"""

from __future__ import annotations

import math

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# the ImageNet mean on the 0-255 scale: padding with it is ~0 after the usual normalisation (YOLOX's
# grey 114 is up to 0.2 sigma off); the tasks pad batches with the model's own mean (collate.pad_value)
PAD_VALUE = (124, 116, 104)


def image_size_of(value) -> int | tuple[int, int]:
    """data.image_size as a config gives it (an int, or a [short, max] list) -> an int or (short, max)."""
    return int(value) if isinstance(value, int) else tuple(int(v) for v in value)


def resize(image_size) -> v2.Transform:
    """Keep-ratio resize. int N: the longer side becomes N; [short, max]: the shorter side becomes
    `short` unless the longer side would pass `max` (the detectron2 / FCOS 800x1333 rule). A letterbox
    is this resize too: the collate pads it to the square (collate.canvas_size)."""
    if isinstance(image_size, int):
        return v2.Resize(size=None, max_size=int(image_size), antialias=True)
    short, longest = (int(v) for v in image_size)
    return v2.Resize(size=short, max_size=longest, antialias=True)


def resized_size(h: int, w: int, image_size) -> tuple[int, int]:
    """(h, w) after `resize(image_size)`, torchvision's rule spelt out (sizes are truncated, not
    rounded) for whoever must reproduce it, e.g. the export sidecar and its test."""
    short, long = min(h, w), max(h, w)
    if isinstance(image_size, int):
        new_short, new_long = int(image_size * short / long), int(image_size)
    else:
        s, m = (int(v) for v in image_size)
        new_short, new_long = s, int(s * long / short)
        if new_long > m:
            new_short, new_long = int(m * new_short / new_long), m
    return (new_long, new_short) if h > w else (new_short, new_long)


def finish() -> list[v2.Transform]:
    return [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)]


def hsv_jitter(hsv) -> list[v2.Transform]:
    """data.hsv [h, s, v] as the YOLO tools define it: saturation and value (brightness) multiplied by gains
    in [1 - s, 1 + s] and [1 - v, 1 + v] (torchvision's ColorJitter's ranges), the hue shifted by up to +-h of
    the colour circle (HSVJitter). null or zeros: none."""
    if not hsv or not any(hsv):
        return []
    return [HSVJitter(*(float(x) for x in hsv))]


class HSVJitter(v2.Transform):
    """Value and saturation gains and a hue shift as one 3 x 3 colour matrix: each of the three is linear in
    RGB space (a value gain scales it; a saturation gain f blends with the grey level, f x + (1 - f) grey, by
    ColorJitter's grey weights; a hue shift of the small angles of augmentation is a rotation about the grey
    axis), so one matrix product and one clamp replace ColorJitter's RGB -> HSV -> RGB round trip and its two
    float passes (1.5 ms against 0.55 ms for a 256 px image on one CPU core; written here for that reason).
    The gains and the angle come from the global RNG (seeded per sample); greys stay grey under the hue and
    saturation terms; boxes pass through."""

    _transformed_types = (tv_tensors.Image,)
    GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights

    def __init__(self, hue: float, saturation: float, value: float):
        super().__init__()
        self.hue, self.saturation, self.value = float(hue), float(saturation), float(value)

    def make_params(self, flat_inputs: list) -> dict:
        gains = torch.empty(3).uniform_(-1, 1)  # (3,) value, saturation, hue draws in [-1, 1]
        return {"value": 1 + self.value * float(gains[0]), "saturation": 1 + self.saturation * float(gains[1]),
                "angle": self.hue * float(gains[2]) * 2 * math.pi}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        c, s = math.cos(params["angle"]), math.sin(params["angle"])
        k = 1 / math.sqrt(3)  # the grey axis (1, 1, 1) / sqrt(3); Rodrigues' rotation about it
        a, b = c + (1 - c) / 3, (1 - c) / 3
        hue = torch.tensor([[a, b - k * s, b + k * s], [b + k * s, a, b - k * s], [b - k * s, b + k * s, a]])  # (3, 3)
        f = params["saturation"]
        sat = f * torch.eye(3) + (1 - f) * torch.tensor(self.GREY).expand(3, 3)  # (3, 3) each row blends with grey
        m = params["value"] * hue @ sat  # (3, 3)
        out = torch.einsum("ij,jhw->ihw", m, inpt.float())  # (3, H, W)
        if inpt.dtype == torch.uint8:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def train_transforms(image_size, hflip: float = 0.5, steps: list | None = None, hsv=None):
    """Flip + keep-ratio resize + colour jitter (data.hsv, on the resized image: cheaper), or the user's
    pipeline (a letterbox is the same resize: the collate pads it to the square)."""
    if steps:  # the user's pipeline, instantiated by Hydra
        return v2.Compose(list(steps) + finish())
    flip = [v2.RandomHorizontalFlip(p=hflip)] if hflip > 0 else []
    return v2.Compose(flip + [resize(image_size)] + hsv_jitter(hsv) + finish())


def val_transforms(image_size, steps: list | None = None):
    """The keep-ratio resize, or the user's pipeline."""
    if steps:
        return v2.Compose(list(steps))
    return v2.Compose([resize(image_size)])


def mosaic(samples: list[tuple], side: int, g: torch.Generator, fill: tuple = PAD_VALUE) -> tuple:
    """YOLOX's mosaic: four (image uint8 (3, h, w), boxes (n, 4), labels (n,)), each with its longer side
    resized to `side`, around a centre drawn in [side/2, 3 side/2] of a 2 side canvas; then the
    side x side window around the canvas centre, scaled by [0.5, 1.5] and shifted by up to 0.1 side
    (YOLOX's random_perspective with border -side/2), so objects keep the size they have at `side`.
    Every draw comes from `g`."""
    canvas = torch.tensor(fill, dtype=torch.uint8)[:, None, None].repeat(1, 2 * side, 2 * side)  # (3, 2s, 2s)
    cx, cy = (torch.rand(2, generator=g) * side + side / 2).long().tolist()
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(samples):
        h, w = image.shape[-2:]
        scale = side / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        if (h, w) != tuple(image.shape[-2:]):  # images cached at the training size are used as they are
            image = F.resize(image, [h, w], antialias=True)
        x0 = cx - w if k in (0, 2) else cx  # top-left, top-right, bottom-left, bottom-right of the centre
        y0 = cy - h if k in (0, 1) else cy
        X1, Y1, X2, Y2 = max(x0, 0), max(y0, 0), min(x0 + w, 2 * side), min(y0 + h, 2 * side)
        canvas[:, Y1:Y2, X1:X2] = image[:, Y1 - y0 : Y2 - y0, X1 - x0 : X2 - x0]
        shifted = boxes * scale + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)  # (n, 4)
        all_boxes.append(torch.maximum(torch.minimum(shifted, torch.tensor([X2, Y2, X2, Y2])),
                                       torch.tensor([X1, Y1, X1, Y1])))
        all_labels.append(labels)
    image, boxes = _window(canvas, torch.cat(all_boxes), side, g, fill)  # (3, s, s), (n, 4)
    boxes = boxes.clamp(0, side)
    keep = ((boxes[:, 2:] - boxes[:, :2]) >= 2).all(1)  # (n,) SanitizeBoundingBoxes(min_size=2)
    return image, boxes[keep], torch.cat(all_labels)[keep]


def _window(canvas: torch.Tensor, boxes: torch.Tensor, side: int, g: torch.Generator, fill: tuple) -> tuple:
    """The side x side output of a 2 side canvas (uint8 (3, 2s, 2s)) scaled by a factor in [0.5, 1.5] about the
    canvas centre and shifted by up to 0.1 side, then cropped around it: a scale and a shift are the crop of
    side / factor canvas pixels resized to side (no rotation or shear), so it is one uint8 antialiased resize
    of that crop (padded with `fill` where it leaves the canvas), at a factor rounded to whole canvas pixels;
    the boxes (n, 4) follow the same crop and factor."""
    scale = 0.5 + float(torch.rand((), generator=g))  # in [0.5, 1.5]
    shift = (torch.rand(2, generator=g) * 2 - 1) * 0.1 * side  # (2,) x, y in pixels
    crop = max(1, round(side / scale))  # canvas pixels the window sees
    left, top = (round(side - (side / 2 + float(t)) / scale) for t in shift)  # the canvas pixel at the window's 0, 0
    n = canvas.shape[-1]
    x1, y1, x2, y2 = max(left, 0), max(top, 0), min(left + crop, n), min(top + crop, n)
    if (x1, y1, x2, y2) == (left, top, left + crop, top + crop):
        region = canvas[:, y1:y2, x1:x2]  # (3, crop, crop)
    else:
        region = torch.tensor(fill, dtype=torch.uint8)[:, None, None].repeat(1, crop, crop)  # (3, crop, crop)
        region[:, y1 - top : y2 - top, x1 - left : x2 - left] = canvas[:, y1:y2, x1:x2]
    image = F.resize(region, [side, side], antialias=True)  # (3, s, s) uint8
    factor = side / crop
    return image, (boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)) * factor


def mixup(a: tuple, b: tuple) -> tuple:
    """Half of each image (b resized to a's size), the boxes of both."""
    (ia, ba, la), (ib, bb, lb) = a, b
    h, w = ia.shape[-2:]
    sy, sx = h / ib.shape[-2], w / ib.shape[-1]
    ib = F.resize(ib, [h, w], antialias=True)
    image = ((ia.float() + ib.float()) / 2).round().to(torch.uint8)
    return image, torch.cat([ba, bb * torch.tensor([sx, sy, sx, sy])]), torch.cat([la, lb])
