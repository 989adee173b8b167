"""detcli predict checkpoint=PATH source=IMAGE|DIR|GLOB: predictions.json (COCO results format, the
dataset's own category ids, x,y,w,h in original pixels) and one annotated image per input.

Images are preprocessed as the checkpoint's data config says for validation (val_transforms or the
keep-ratio resize, letterbox, padding with the model's mean), as in `detcli eval`. With
`predict.ann=FILE.json` (or `train` / `val`: the checkpoint's own dataset) the image ids are the
dataset's, so predictions.json can be scored against it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torchvision.io import write_jpeg, write_png
from torchvision.utils import draw_bounding_boxes

from detcli.build import instantiate_group
from detcli.data.base import read_image
from detcli.data.coco import load_coco_json
from detcli.data.collate import pad_value
from detcli.data.images import ImageFiles, dataset_ids, find_images, preprocessing
from detcli.engine.evaluator import run_inference
from detcli.tasks.common import load_model, log, run_dir

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
           "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def run(cfg: DictConfig) -> int:
    out = run_dir()
    model, ckpt_cfg, meta, device = load_model(cfg.checkpoint, cfg.device)
    model.postprocess.max_det = int(cfg.predict.max_det)
    thresh = float(cfg.predict.score_thresh)
    # a threshold below the model's own candidate threshold lowers it: predict.score_thresh=0 keeps everything
    model.postprocess.score_thresh = min(float(model.postprocess.score_thresh), thresh)
    files = find_images(str(cfg.source))
    transforms, collate = preprocessing(ckpt_cfg.data, pad_value(model.pixel_mean))
    ids = image_ids(files, str(cfg.source), cfg.predict.get("ann"), ckpt_cfg, meta["cat_ids"])
    loader = DataLoader(ImageFiles(files, transforms, ids), batch_size=int(cfg.batch_size), collate_fn=collate)
    names, cat_ids = meta["class_names"], meta["cat_ids"]
    results = []
    for batch, dets in run_inference(model, loader, device):
        for m, d in zip(batch["meta"], dets):
            keep = d["scores"] >= thresh
            boxes, scores, labels = d["boxes"][keep], d["scores"][keep], d["labels"][keep]
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                x1, y1, x2, y2 = box
                results.append({"file_name": m["file_name"], "image_id": m["image_id"],
                                "category_id": cat_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": score})
            if cfg.save_images:
                draw(Path(m["file_name"]), boxes, scores, labels, names, out / "images" / m["relative"])
    (out / "predictions.json").write_text(json.dumps(results, indent=1) + "\n")
    log.info("%d detections on %d images -> %s", len(results), len(files), out / "predictions.json")
    print(f"{len(results)} detections on {len(files)} images written to {out / 'predictions.json'}")
    return len(results)


def image_ids(files: list[Path], source: str, ann: str | None, ckpt_cfg: DictConfig,
              cat_ids: list[int]) -> list[int] | None:
    """The dataset's ids of the files when `ann` names their annotations (None: 1, 2, ... in file order).
    File names are matched relative to the source folder (or the files' common folder)."""
    if not ann:
        return None
    if ann in ("train", "val"):  # the checkpoint's own dataset, whatever its format
        records, _, _ = instantiate_group("data", ckpt_cfg.data).load_split(ann, cat_ids)
        known = {r.file_name: r.image_id for r in records}
    else:
        known = {img["file_name"]: img["id"] for img in load_coco_json(ann, "predict.ann")["images"]}
    path = Path(source).expanduser()
    root = path if path.is_dir() else Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    return dataset_ids(files, root, known)


def draw(path: Path, boxes, scores, labels, names: list[str], target: Path) -> None:
    """The image with its detections, written at `target` (the input's path under the source, so that
    same-named files of different folders do not collide)."""
    image = read_image(path)
    captions = [f"{names[lab]} {s:.2f}" for lab, s in zip(labels.tolist(), scores.tolist())]
    colors = [PALETTE[lab % len(PALETTE)] for lab in labels.tolist()]
    drawn = draw_bounding_boxes(image, boxes, labels=captions, colors=colors, width=2) if len(boxes) else image
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        write_jpeg(drawn, str(target), quality=92)
    else:
        write_png(drawn, str(target.with_name(target.name + ".png") if target.suffix.lower() != ".png" else target))

