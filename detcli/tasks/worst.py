"""The worst images of an evaluation: the val images with the most errors (objects missed plus false
detections, at the per-class F1-optimal thresholds: detcli/engine/thresholds.py) drawn into
`<eval run dir>/worst/<rank>_<file stem>.jpg`, ground truth in green (its class), detections in red (class
and score). An image that cannot be read is skipped with a note.

Naming: D = detections of an image, G = its objects.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from torchvision.io import write_jpeg
from torchvision.utils import draw_bounding_boxes

from detcli.data.base import read_image
from detcli.engine.thresholds import image_errors, worst_images
from detcli.errors import DataError
from detcli.tasks.common import log
from detcli.tasks.predictors import DEFAULT_THRESH

GT_COLOR, DET_COLOR = "#00c000", "#ff0000"


def draw_worst(dets: list[dict[str, Tensor]], gts: list[dict[str, Tensor]], metas: list[dict], image_dir: Path,
               thresholds: list[float | None], names: list[str], k: int, out: Path) -> list[dict]:
    """Draws the `k` worst images into `out` (nothing when k is 0); returns one record per image ranked
    ({"rank", "file_name", "missed", "false", "drawn"})."""
    errors = image_errors(dets, gts, thresholds, DEFAULT_THRESH)
    ranked = []
    for rank, i in enumerate(worst_images(errors, k), 1):
        target = out / f"{rank}_{Path(metas[i]['file_name']).stem}.jpg"
        kept = keep_mask(dets[i], thresholds)
        try:
            draw_errors(image_dir / metas[i]["file_name"], gts[i], dets[i], kept, names, target)
            drawn = True
        except DataError as e:
            log.warning("worst image %d not drawn: %s", rank, e)
            drawn = False
        ranked.append({"rank": rank, "file_name": metas[i]["file_name"], **errors[i], "drawn": drawn})
    return ranked


def keep_mask(d: dict[str, Tensor], thresholds: list[float | None]) -> Tensor:
    """(D,) the detections at or above their class's threshold (DEFAULT_THRESH where it is None)."""
    thresh = [DEFAULT_THRESH if t is None else t for t in thresholds]
    return d["scores"] >= d["scores"].new_tensor(thresh)[d["labels"].long()]


def draw_errors(path: Path, g: dict[str, Tensor], d: dict[str, Tensor], kept: Tensor, names: list[str],
                target: Path) -> None:
    """The image with its objects (green) and kept detections (red), written as a jpeg at `target`."""
    image = read_image(path)
    g_boxes, g_labels = g["boxes"].float().reshape(-1, 4), g["labels"].tolist()  # (G, 4)
    d_boxes = d["boxes"][kept].float().reshape(-1, 4)  # (D, 4)
    d_captions = [f"{names[lab]} {s:.2f}" for lab, s in zip(d["labels"][kept].tolist(), d["scores"][kept].tolist())]
    if len(g_boxes):
        image = draw_bounding_boxes(image, g_boxes, labels=[names[lab] for lab in g_labels], colors=GT_COLOR, width=2)
    if len(d_boxes):
        image = draw_bounding_boxes(image, d_boxes, labels=d_captions, colors=DET_COLOR, width=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(image, str(target), quality=92)
