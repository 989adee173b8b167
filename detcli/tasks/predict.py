"""detcli predict checkpoint=PATH source=IMAGE|DIR|GLOB: predictions.json (COCO results format, the
dataset's own category ids, x,y,w,h in original pixels), one annotated image per input, with
`predict.save_txt=true` YOLO label files, and summary.json (counts, the skipped files and why, the score
threshold of each class).

A detection is kept at or above its class's threshold: `predict.score_thresh` when given, else the per-class
F1-optimal thresholds training stored in the checkpoint (the export's sidecar with backend=onnx), 0.3 for a
class without one or a model without them.

Images are preprocessed as the checkpoint's data config says for validation (val_transforms or the
keep-ratio resize, letterbox, padding with the model's mean), as in `detcli eval`; with
`predict.backend=onnx predict.onnx=model.onnx` the exported graph runs in onnxruntime instead and its
sidecar gives the classes and the same preprocessing (tasks/predictors.py). A file that cannot be read is
listed (log, summary.json) and skipped. With `predict.ann=FILE.json` (or `train` / `val`: the checkpoint's
own dataset) the image ids are the dataset's, so predictions.json can be scored against it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.io import write_jpeg, write_png

from detcli.build import instantiate_group
from detcli.checkpoint import load_checkpoint
from detcli.data.base import read_image
from detcli.data.coco import load_coco_json
from detcli.data.images import ReadableImageFiles, SkipUnreadable, dataset_ids, find_images, preprocessing
from detcli.deploy.predictors import build_predictor
from detcli.engine.progress import Progress
from detcli.errors import ConfigError
from detcli.evaluation.sliced import Slicing, sliced_detections
from detcli.tasks.common import log, run_dir
from detcli.visualization.draw import draw_boxes


def run(cfg: DictConfig) -> int:
    out = run_dir()
    predictor = build_predictor(cfg)
    files = find_images(str(cfg.source))
    keep_classes = class_filter(cfg.predict.get("classes"), predictor.class_names)
    transforms, collate = preprocessing(predictor.data_cfg, predictor.pad)
    collate.canvas = predictor.canvas or collate.canvas
    ids = image_ids(files, str(cfg.source), cfg.predict.get("ann"), cfg, predictor)
    loader = DataLoader(ReadableImageFiles(files, transforms, ids), batch_size=int(cfg.batch_size),
                        collate_fn=SkipUnreadable(collate))
    slicing = slicing_of(cfg, predictor)
    results, skipped, done = [], [], 0
    with Progress(len(files), label="predict") as bar:
        for item in loader:
            for s in item["skipped"]:
                log.warning("skipped '%s': %s", s["file_name"], s["reason"])
            skipped += item["skipped"]
            if item["batch"] is not None:
                for m, d in zip(item["batch"]["meta"], predictor(item["batch"])):
                    if slicing is not None:  # the whole image's detections merged with its windows'
                        d = sliced_detections(predictor, read_image(Path(m["file_name"])), slicing, d,
                                              len(predictor.class_names), int(cfg.predict.max_det),
                                              int(predictor.data_cfg.get("size_divisible", 32)), predictor.pad,
                                              predictor.canvas)
                    results += write_image_outputs(cfg, m, d, keep_classes, predictor, out)
            done += len(item["skipped"]) + (len(item["batch"]["meta"]) if item["batch"] is not None else 0)
            bar.advance(done)
    (out / "predictions.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps({
        "backend": predictor.name, "model": predictor.path, "images": len(files), "predicted": len(files) - len(skipped),
        "detections": len(results), "skipped": [{"file": s["file_name"], "reason": s["reason"]} for s in skipped],
        "score_thresholds": dict(zip(predictor.class_names, predictor.thresholds.tolist())),
    }, indent=1) + "\n")
    log.info("%d detections on %d images -> %s", len(results), len(files) - len(skipped), out / "predictions.json")
    print(f"{len(results)} detections on {len(files) - len(skipped)} images written to {out / 'predictions.json'}"
          + (f"; {len(skipped)} unreadable files skipped (listed in {out / 'summary.json'})" if skipped else ""))
    return len(results)


def slicing_of(cfg: DictConfig, predictor) -> Slicing | None:
    """predict.tile as a Slicing (merge IoU default: the model's NMS threshold, its sidecar's for a graph); a
    fixed-size graph needs tiles that fit its input."""
    model = getattr(predictor, "model", None)
    nms = float(getattr(model.postprocess, "nms_thresh", 0.5)) if model is not None else predictor.nms_thresh
    slicing = Slicing.of(cfg.predict.get("tile"), nms)
    if slicing is not None and predictor.canvas and slicing.tiling.size > min(predictor.canvas):
        raise ConfigError(f"predict.tile.size={slicing.tiling.size}: the graph takes {predictor.canvas[0]} x "
                          f"{predictor.canvas[1]} inputs; give tiles no larger, or export with export.dynamic=true.")
    return slicing


def write_image_outputs(cfg: DictConfig, meta: dict, dets: dict[str, Tensor], keep_classes: set[int] | None,
                        predictor, out: Path) -> list[dict]:
    """One image's detections at or above their class's threshold (predict.score_thresh, or the model's
    per-class ones: predictors.class_thresholds; of the kept classes): its annotated image and YOLO label
    file as configured; returns its COCO results."""
    keep = dets["scores"] >= predictor.thresholds.to(dets["scores"].dtype)[dets["labels"].long()]
    if keep_classes is not None:  # after NMS: predict.max_det counts every class, as the exported graph does
        keep &= torch.isin(dets["labels"], torch.tensor(sorted(keep_classes), dtype=dets["labels"].dtype))
    boxes, scores, labels = dets["boxes"][keep], dets["scores"][keep], dets["labels"][keep]
    if cfg.save_images:
        draw(Path(meta["file_name"]), boxes, scores, labels, predictor.class_names, out / "images" / meta["relative"])
    if cfg.predict.get("save_txt"):
        write_yolo_txt(out / "labels" / Path(meta["relative"]).with_suffix(".txt"), boxes, scores, labels,
                       meta["orig_size"], bool(cfg.predict.get("save_conf")))
    return [{"file_name": meta["file_name"], "image_id": meta["image_id"], "category_id": predictor.cat_ids[label],
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]


def class_filter(classes, names: list[str]) -> set[int] | None:
    """predict.classes (class names or 0-based indices, as in YOLO label files) as a set of labels; None: all."""
    if classes is None:
        return None
    items = OmegaConf.to_container(classes) if isinstance(classes, ListConfig) else classes
    items = items if isinstance(items, list) else [items]
    labels = set()
    for c in items:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            labels.add(c)
        elif isinstance(c, str) and c in names:
            labels.add(names.index(c))
        else:
            raise ConfigError(f"predict.classes: {c!r} is not a class of this model; give names or 0-based indices "
                              f"among {', '.join(f'{i}={n}' for i, n in enumerate(names))}.")
    return labels


def write_yolo_txt(path: Path, boxes: Tensor, scores: Tensor, labels: Tensor, orig_size: tuple[int, int],
                   save_conf: bool) -> None:
    """YOLO labels, one line per detection: class cx cy w h normalised to the original image, then the score
    when `save_conf` (ultralytics' save_txt / save_conf); an image without detections gets an empty file."""
    H, W = orig_size
    lines = []
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        row = (label, (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H) + ((score,) if save_conf else ())
        lines.append(("%g " * len(row)).rstrip() % row + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def image_ids(files: list[Path], source: str, ann: str | None, cfg: DictConfig, predictor) -> list[int] | None:
    """The dataset's ids of the files when `ann` names their annotations (None: 1, 2, ... in file order).
    File names are matched relative to the source folder (or the files' common folder)."""
    if not ann:
        return None
    if ann in ("train", "val"):  # the checkpoint's own dataset, whatever its format
        if not getattr(predictor, "data_known", False) and not cfg.get("checkpoint"):
            raise ConfigError(f"predict.ann={ann} reads the checkpoint's dataset: give checkpoint=PATH too, or "
                              f"predict.ann=FILE.json (COCO).")
        ckpt_cfg = predictor.ckpt_cfg or OmegaConf.create(load_checkpoint(cfg.checkpoint)["config"])
        records, _, _ = instantiate_group("data", ckpt_cfg.data).load_split(ann, predictor.cat_ids)
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
    drawn = draw_boxes(image, boxes, labels, names, scores)
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        write_jpeg(drawn, str(target), quality=92)
    else:
        write_png(drawn, str(target.with_name(target.name + ".png") if target.suffix.lower() != ".png" else target))
