"""detcli predict checkpoint=PATH source=IMAGE|DIR|GLOB: predictions.json (COCO results format, the
dataset's own category ids, x,y,w,h in original pixels) and one annotated image per input."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torchvision.io import write_jpeg, write_png
from torchvision.utils import draw_bounding_boxes

from detcli.data.base import read_image
from detcli.data.collate import collate
from detcli.data.images import ImageFiles, find_images
from detcli.engine.evaluator import run_inference
from detcli.tasks.common import load_model, log, run_dir

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
           "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def run(cfg: DictConfig) -> int:
    out = run_dir()
    model, ckpt_cfg, meta, device = load_model(cfg.checkpoint, cfg.device)
    model.postprocess.max_det = int(cfg.predict.max_det)
    files = find_images(str(cfg.source))
    dataset = ImageFiles(files, ckpt_cfg.data.image_size)
    loader = DataLoader(dataset, batch_size=int(cfg.batch_size), collate_fn=collate)
    names, cat_ids = meta["class_names"], meta["cat_ids"]
    results, thresh = [], float(cfg.predict.score_thresh)
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

