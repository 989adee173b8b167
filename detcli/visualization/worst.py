"""The worst images of an evaluation: the val images with the most errors (objects missed plus false
detections, at the per-class F1-optimal thresholds: detcli/evaluation/thresholds.py) drawn into
`<eval run dir>/worst/<rank>_<file stem>.jpg`, ground truth in green (its class), detections in red (class
and score). An image that cannot be read is skipped with a note.

Naming: D = detections of an image, G = its objects.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor
from torchvision.io import write_jpeg

from detcli.data.base import read_image
from detcli.errors import DataError
from detcli.evaluation.thresholds import DEFAULT_THRESH, image_errors, worst_images
from detcli.visualization.draw import draw_boxes

log = logging.getLogger("detcli")

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
    image = draw_boxes(image, g["boxes"], g["labels"], names, colors=GT_COLOR)
    image = draw_boxes(image, d["boxes"][kept], d["labels"][kept], names, d["scores"][kept], colors=DET_COLOR)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(image, str(target), quality=92)


def draw_issue(path: Path, issue: dict, target: Path) -> bool:
    """One likely label issue (detcli/evaluation/label_issues.py) drawn: the label's box green with its class, the
    model's box red with its class and score, the kind and score in the file name; False when the image cannot
    be read."""
    import torch

    try:
        image = read_image(path)
    except DataError as e:
        log.warning("label issue not drawn: %s", e)
        return False
    if issue["kind"] != "missing":
        image = draw_boxes(image, torch.tensor([issue["box"]]), torch.zeros(1, dtype=torch.long), [issue["class"]],
                           colors=GT_COLOR)
    if "model_box" in issue:
        image = draw_boxes(image, torch.tensor([issue["model_box"]]), torch.zeros(1, dtype=torch.long),
                           [issue["model_class"]], torch.tensor([issue["model_score"]]), colors=DET_COLOR)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(image, str(target), quality=92)
    return True
