"""Dataset defects: found once, listed with their file and line / id, then handled by
`data.on_bad`: error (refuse, listing them), skip (leave out bad images and boxes) or clip (clip boxes
that leave the image, leave out the rest). skip and clip make training possible; they never rewrite
the validation ground truth (`val_policy`), which would overstate mAP. Input files are only ever read."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from detcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)
POLICIES = ("error", "skip", "clip")
SLACK = 1.0  # px a box may pass the border before it counts as out of the image (it is clipped)


@dataclass(frozen=True)
class Defect:
    file: str  # the file to open
    where: str  # line / annotation id / object, or ""
    problem: str
    image: int | None = None  # index of the record it concerns; None: the dataset as a whole
    box: int | None = None  # index of the box in that record; None: the whole image
    clippable: bool = False
    evaluable: bool = False  # an image defect that still lets the image be evaluated (a size mismatch)

    def __str__(self) -> str:
        return f"{self.file}{': ' + self.where if self.where else ''}: {self.problem}"


def box_defects(records: list) -> list[Defect]:
    """NaN coordinates, zero or negative width / height, boxes out of the image."""
    out = []
    for i, r in enumerate(records):
        W, H = r.width, r.height
        for j, b in enumerate(r.boxes):
            where = r.sources[j] if j < len(r.sources) else f"box {j}"
            if not np.isfinite(b).all():
                out.append(Defect(r.ann_file, where, f"NaN or missing coordinates {b.tolist()}", i, j))
            elif b[2] <= b[0] or b[3] <= b[1]:
                out.append(Defect(r.ann_file, where, f"zero or negative size (w={b[2] - b[0]:g}, h={b[3] - b[1]:g})",
                                  i, j))
            elif b[0] < -SLACK or b[1] < -SLACK or b[2] > W + SLACK or b[3] > H + SLACK:
                out.append(Defect(r.ann_file, where, f"box {np.round(b, 1).tolist()} leaves the {W}x{H} image",
                                  i, j, clippable=True))
    return out


def image_defects(records: list, root: Path, decode: bool = False, workers: int = 8) -> list[Defect]:
    """Missing, unreadable or truncated images and sizes that differ from the annotation, read in
    parallel. decode=False reads headers only (fast); decode=True decodes every image."""

    def check(i: int) -> Defect | None:
        r = records[i]
        path = root / r.file_name
        if not path.is_file():
            return Defect(str(path), "", "image file is missing", i)
        try:
            with Image.open(path) as im:
                size = im.size
                if decode:
                    im.load()
        except Exception as e:  # noqa: BLE001 - every decoder error means an unreadable image
            return Defect(str(path), "", f"image cannot be read ({type(e).__name__}: {e})", i)
        if _truncated(path):  # cheap: the last bytes only
            return Defect(str(path), "", "image file is truncated (no end-of-image marker)", i)
        if size != (r.width, r.height):
            return Defect(str(path), "", f"image is {size[0]}x{size[1]} but its annotation says {r.width}x{r.height}",
                          i, evaluable=True)
        return None

    with ThreadPoolExecutor(workers) as pool:
        return [d for d in pool.map(check, range(len(records))) if d is not None]


def _truncated(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return False
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 32))
        tail = f.read()
    return b"\xff\xd9" not in tail if suffix != ".png" else b"IEND" not in tail


def _check_policy(on_bad: str) -> None:
    if on_bad not in POLICIES:
        raise ConfigError(f"data.on_bad must be one of {POLICIES}, got '{on_bad}'.")


def apply_policy(records: list, defects: list[Defect], on_bad: str, what: str) -> list:
    """Records with the defects handled as `on_bad` says; a DataError listing them for 'error'."""
    _check_policy(on_bad)
    if not defects:
        return records
    if on_bad == "error":
        raise DataError(report(defects, what) + " Fix the files, or set data.on_bad=skip (leave them out) or "
                        "data.on_bad=clip (clip boxes into the image); `detcli data check` lists everything.")
    bad_images = {d.image for d in defects if d.box is None and d.image is not None}
    bad_boxes: dict[int, set[int]] = {}
    clip: dict[int, set[int]] = {}
    for d in defects:
        if d.box is not None:
            (clip if on_bad == "clip" and d.clippable else bad_boxes).setdefault(d.image, set()).add(d.box)
    out = []
    for i, r in enumerate(records):
        if i in bad_images:
            continue
        keep = np.array([j not in bad_boxes.get(i, ()) for j in range(len(r.boxes))], dtype=bool)
        boxes = r.boxes.copy()
        if i in clip:
            boxes = np.clip(boxes, 0, [r.width, r.height, r.width, r.height]).astype(np.float32)
        out.append(replace(r, boxes=boxes[keep], labels=r.labels[keep], iscrowd=r.iscrowd[keep], area=r.area[keep],
                           sources=[s for s, k in zip(r.sources, keep) if k]))
    dropped = sum(len(v) for v in bad_boxes.values())
    clipped = sum(len(v) for v in clip.values())
    log.warning("%s, data.on_bad=%s: %d images left out, %d boxes left out, %d boxes clipped "
                "(`detcli data check` lists them)", what, on_bad, len(bad_images), dropped, clipped)
    return out


def val_policy(records: list, defects: list[Defect], on_bad: str, what: str) -> tuple[list, str]:
    """Validation records under `on_bad`, and a note on what the metric leaves out ("" if nothing).

    'error' refuses as for training. skip and clip keep every box as annotated, those leaving the image
    unclipped. Left out is only what cannot be evaluated: boxes no detection can match (NaN
    coordinates, no width or height, a class the model does not know; kept, they would count as misses
    no model can avoid, an unknown class as a class of its own with AP 0), and images whose file is
    missing or unreadable, whose annotations cannot be read, or that repeat an image id (their boxes
    belong to the first). An image whose size differs from its annotation stays: its boxes are scaled
    to the file, as every split reads them."""
    _check_policy(on_bad)
    if on_bad == "error" or not defects:
        return apply_policy(records, defects, on_bad, what), ""
    left_out = {d.image: d for d in defects if d.box is None and d.image is not None and not d.evaluable}
    out, unmatchable = [], 0
    for i, r in enumerate(records):
        if i not in left_out:
            keep = _matchable(r.boxes, r.labels)
            unmatchable += int((~keep).sum())
            out.append(_subset(r, keep))
    names = [f"{d.file} ({d.where})" if d.where else d.file for d in left_out.values()]
    note = _val_note(len(defects), unmatchable, names, what, on_bad)
    log.warning("%s", note)
    return out, note


def _matchable(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) bool: a box with finite coordinates, a positive width and height, and a known class."""
    sized = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return np.isfinite(boxes).all(1) & sized & (labels >= 0)


def _subset(r, keep: np.ndarray):
    if keep.all():
        return r
    return replace(r, boxes=r.boxes[keep], labels=r.labels[keep], iscrowd=r.iscrowd[keep], area=r.area[keep],
                   sources=[s for s, k in zip(r.sources, keep) if k])


def _val_note(found: int, boxes: int, images: list[str], what: str, on_bad: str, limit: int = 10) -> str:
    note = (f"{what}: {found} defects (`detcli data check` lists them); data.on_bad={on_bad} does not rewrite "
            f"validation ground truth: boxes are evaluated as annotated")
    if boxes:
        note += f", except {boxes} that no detection can match (NaN, no width / height, unknown class), left out"
    if images:
        shown = ", ".join(images[:limit]) + (f" and {len(images) - limit} more" if len(images) > limit else "")
        note += f"; {len(images)} images that cannot be evaluated are left out: {shown}"
    return note


def report(defects: list[Defect], what: str, limit: int = 20) -> str:
    lines = [f"{what}: {len(defects)} defects:"] + [f"  {d}" for d in defects[:limit]]
    if len(defects) > limit:
        lines.append(f"  ... and {len(defects) - limit} more")
    return "\n".join(lines) + "\n"
