"""Boxes drawn on images, the same way wherever detcli draws them (predict's images, `data show`, the
report's predictions, the worst images of an evaluation): one colour per class from `PALETTE`, captions
"class score", torchvision's draw_bounding_boxes.

Naming: D = boxes of an image.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.utils import draw_bounding_boxes

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
           "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def class_colors(labels: Tensor) -> list[str]:
    """labels (D,) -> one PALETTE colour per box, by class."""
    return [PALETTE[k % len(PALETTE)] for k in labels.tolist()]


def draw_boxes(image: Tensor, boxes: Tensor, labels: Tensor, names: list[str], scores: Tensor | None = None,
               colors: str | list[str] | None = None, width: int = 2) -> Tensor:
    """image (3, H, W) uint8 with boxes (D, 4) x1y1x2y2 drawn in their class colours (or `colors`), captioned
    with the class name and, given `scores` (D,), the score. No boxes: the image as it is."""
    if len(boxes) == 0:
        return image
    captions = [names[k] for k in labels.tolist()]
    if scores is not None:
        captions = [f"{c} {s:.2f}" for c, s in zip(captions, scores.tolist())]
    return draw_bounding_boxes(image, boxes.float().reshape(-1, 4), labels=captions,
                               colors=class_colors(labels) if colors is None else colors, width=width)
