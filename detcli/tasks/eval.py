"""detcli eval checkpoint=PATH | weights=... | detections=RESULTS.json: the evaluation report of a model (a detcli
checkpoint, or weights=: torchvision's COCO weights, a local file; detcli/weights/source.py), or of any COCO
results file, on the val set.

Writes to the run folder: metrics.json (the 12 COCO statistics, per class AP / AP50 / recall and the
F1-optimal score threshold (`f1_thresh`, also `score_thresholds` in label order: detcli/evaluation/thresholds.py,
what training stores for predict), the TIDE error breakdown (detcli/evaluation/tide.py), the confusion matrix,
VOC AP with `voc=true`, the worst images ranked), detections.json (the model's detections as COCO results: the
dataset's image and category ids, x, y, w, h in original pixels), pr_curve.png and confusion_matrix.png, and
worst/<rank>_<file stem>.jpg: the `worst` images with the most missed + false boxes at those thresholds
(tasks/worst.py); prints the summary and per-class tables. `detections=FILE` scores that file instead of running a model: against the checkpoint's val
set when `checkpoint=` is given too, else against the configured data (`data=coco data.val_ann=...`).
`postprocess.KEY=VALUE` (NMS threshold, box voting, ...) is set over the checkpoint's postprocess, and
metrics.json records the postprocess used (`postprocess`).

The val labels follow the checkpoint's classes (by id for COCO, by name for VOC / YOLO). Defects of the
val set are counted in metrics.json (`val_defects`, `val_note`): data.on_bad never rewrites its ground
truth, and the note says what the metric had to leave out."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from detcli.build import instantiate_group, load_model, model_source
from detcli.build import load_checkpoint_config as checkpoint_config
from detcli.data.coco import read_json
from detcli.data.collate import pad_value
from detcli.errors import ConfigError
from detcli.evaluation.coco import STAT_KEYS, STAT_NAMES
from detcli.evaluation.confusion import confusion_matrix
from detcli.evaluation.evaluator import collect, score
from detcli.evaluation.sliced import Slicing, slice_dataset
from detcli.evaluation.thresholds import f1_thresholds
from detcli.evaluation.tide import ERRORS, tide
from detcli.evaluation.voc import voc_ap
from detcli.tasks.common import data_config, log, run_dir
from detcli.tasks.label_issues import write_label_issues
from detcli.visualization.plots import confusion_matrix_plot, pr_curves
from detcli.visualization.worst import draw_worst


def run(cfg: DictConfig) -> float:
    out = run_dir()
    if not cfg.get("checkpoint") and not cfg.get("weights") and not cfg.get("detections"):
        raise ConfigError("detcli eval needs checkpoint=PATH (a detcli checkpoint to evaluate), weights=... (e.g. "
                          "torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1: COCO weights scored on your data) or "
                          "detections=RESULTS.json (a COCO results file to score against data.val_ann / data.root).")
    postprocess = None  # the postprocess the detections came from (the checkpoint's, with postprocess.KEY=...)
    if cfg.get("detections"):
        dataset, names, cat_ids, source = results_mode(cfg)
        dets, gts = read_results(Path(str(cfg.detections)), dataset, cat_ids)
        metas = [{"image_id": r.image_id, "file_name": r.file_name} for r in dataset.records]
    else:
        model_path, key = model_source(cfg, "eval")
        model, ckpt_cfg, meta, device = load_model(model_path, cfg.device, cfg.get("postprocess"), key)
        data_cfg = data_config(cfg, ckpt_cfg)
        if cfg.batch_size:
            data_cfg.val_batch_size = int(cfg.batch_size)
        data = instantiate_group("data", data_cfg)
        split = str(cfg.eval.split)
        if split not in ("val", "train"):
            raise ConfigError(f"eval.split must be val or train, got '{split}'.")
        dataset = data.dataset(split, meta["cat_ids"], meta.get("class_names"), augment=False)
        warn_other_names(data, meta)
        names, cat_ids, source = list(meta["class_names"]), list(meta["cat_ids"]), model_path
        postprocess = {k: v for k, v in OmegaConf.to_container(ckpt_cfg.postprocess).items() if k != "_target_"}
        loader = data.val_loader(dataset, pad_value=pad_value(model.pixel_mean))  # padded as in training
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        dets, gts, metas = collect(model, loader, device, str(cfg.precision), bool(cfg.channels_last))
        if slicing := Slicing.of(cfg.eval.get("tile"), float(getattr(model.postprocess, "nms_thresh", 0.5))):  # full-image detections merged with the windows'
            dets = slice_dataset(model, dataset, dets, slicing, device, str(cfg.precision), bool(cfg.channels_last),
                                 len(names), int(model.postprocess.max_det), int(data_cfg.get("size_divisible", 32)),
                                 pad_value(model.pixel_mean))
        write_detections(out / "detections.json", dets, metas, cat_ids)
    result = score(dets, gts, names)
    thresholds = f1_thresholds(dets, gts, len(names))
    for c, t in zip(result.per_class, thresholds):
        c["f1_thresh"] = t
    conf = cfg.confusion
    matrix = confusion_matrix(dets, gts, len(names), float(conf.score_thresh), float(conf.iou_thresh))
    report = {"checkpoint": str(cfg.checkpoint) if cfg.get("checkpoint") else None,
              "weights": str(cfg.weights) if cfg.get("weights") else None,
              "detections": str(cfg.detections) if cfg.get("detections") else None,
              "postprocess": postprocess, "images": len(gts), **result.stats, "per_class": result.per_class,
              "confusion_matrix": {"rows": "predicted", "columns": "true", "labels": [*names, "background"],
                                   "score_thresh": float(conf.score_thresh), "iou_thresh": float(conf.iou_thresh),
                                   "counts": matrix.tolist()},
              "score_thresholds": thresholds,
              "val_defects": len(dataset.defects), "val_note": dataset.defect_note}
    breakdown = tide(dets, gts, len(names))
    report["tide"] = {"ap_50": breakdown["ap"], "delta": breakdown["delta"], "counts": breakdown["counts"],
                      "per_class": [{"class": n, **c} for n, c in zip(names, breakdown["per_class"])]}
    if cfg.voc:
        per_class = voc_ap(dets, gts, len(names))
        valid = [c for c in per_class if c["ap_11"] >= 0]
        report["voc"] = {"map_50_11point": sum(c["ap_11"] for c in valid) / max(len(valid), 1),
                         "map_50_area": sum(c["ap_area"] for c in valid) / max(len(valid), 1),
                         "per_class": [{"class": n, **c} for n, c in zip(names, per_class)]}
    if cfg.worst:
        report["worst"] = draw_worst(dets, gts, metas, dataset.image_dir, thresholds, names, int(cfg.worst),
                                     out / "worst")
    if cfg.eval.label_issues:
        report["label_issues"] = write_label_issues(dets, gts, metas, names, dataset.image_dir, cfg.eval, thresholds,
                                                     out)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if cfg.plots:
        pr_curves(result.precision, result.recall_points, names, out / "pr_curve.png")
        confusion_matrix_plot(matrix, names, out / "confusion_matrix.png", float(conf.score_thresh),
                              float(conf.iou_thresh))
    print_report(report, names, source)
    if dataset.defect_note:
        print(dataset.defect_note)
    written = ["metrics.json"] + (["detections.json"] if not cfg.get("detections") else [])
    written += ["pr_curve.png", "confusion_matrix.png"] if cfg.plots else []
    drawn = sum(w["drawn"] for w in report.get("worst", []))
    written += [f"worst/ ({drawn} images with the most missed + false boxes)"] if drawn else []
    print(f"written to {out}: {', '.join(written)}")
    return result.stats["map"]


def warn_other_names(data, meta: dict) -> None:
    """COCO data matches the model's classes by id: say so when an id names another class here (a custom json
    scored with COCO's weights), as the metric then scores one class as another."""
    if data.match_classes_by != "id":
        return
    model = dict(zip(meta["cat_ids"], meta["class_names"]))
    other = [f"{c['id']} is '{c['name']}' here, '{model[c['id']]}' in the model" for c in data.categories
             if c["id"] in model and c["name"] != model[c["id"]]]
    if other:
        log.warning("the data's category ids name other classes than the model's (COCO data is matched by id): %s",
                    "; ".join(other[:5]) + (f"; {len(other) - 5} more" if len(other) > 5 else ""))


def results_mode(cfg: DictConfig):
    """(val dataset, class names, category ids, what is scored) for detections=FILE: the checkpoint's data
    and classes when checkpoint= is given, else the configured data's own."""
    if cfg.get("checkpoint"):
        ckpt_cfg, meta = checkpoint_config(cfg.checkpoint)
        data = instantiate_group("data", data_config(cfg, ckpt_cfg))
        split = str(cfg.eval.split)
        if split not in ("val", "train"):
            raise ConfigError(f"eval.split must be val or train, got '{split}'.")
        dataset = data.dataset(split, meta["cat_ids"], meta.get("class_names"), augment=False)
        warn_other_names(data, meta)
        return dataset, list(meta["class_names"]), list(meta["cat_ids"]), str(cfg.detections)
    data = instantiate_group("data", cfg.data)
    return data.dataset("val"), data.class_names, data.cat_ids, str(cfg.detections)


def read_results(path: Path, dataset, cat_ids: list[int]) -> tuple[list[dict], list[dict]]:
    """A COCO results file -> (detections, ground truth) per val image, in the dataset's record order."""
    results = read_json(path, "detections", "results file")
    if not isinstance(results, list):
        raise ConfigError(f"detections: '{path}' must hold a JSON list of COCO results "
                          f"({{image_id, category_id, bbox [x, y, w, h], score}}), found a {type(results).__name__}.")
    index = {r.image_id: i for i, r in enumerate(dataset.records)}
    label_of = {c: k for k, c in enumerate(cat_ids)}
    boxes, scores, labels = ([[] for _ in dataset.records] for _ in range(3))
    for n, d in enumerate(results):
        where = f"detections: '{path}', entry {n}"
        if not isinstance(d, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(d):
            raise ConfigError(f"{where}: a COCO result needs image_id, category_id, bbox and score; got {d!r:.200}.")
        if d["image_id"] not in index:
            raise ConfigError(f"{where}: image_id {d['image_id']} is not an image of the val set "
                              f"({len(index)} images, ids such as {list(index)[:5]}).")
        if d["category_id"] not in label_of:
            raise ConfigError(f"{where}: category_id {d['category_id']} is not one of the classes' ids {cat_ids}.")
        if len(d["bbox"]) != 4:
            raise ConfigError(f"{where}: bbox must be [x, y, w, h], got {d['bbox']}.")
        i = index[d["image_id"]]
        x, y, w, h = (float(v) for v in d["bbox"])
        boxes[i].append([x, y, x + w, y + h])
        scores[i].append(float(d["score"]))
        labels[i].append(label_of[d["category_id"]])
    dets = [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(s),
             "labels": torch.tensor(lab, dtype=torch.int64)} for b, s, lab in zip(boxes, scores, labels)]
    gts = [{"boxes": torch.from_numpy(r.boxes).float().reshape(-1, 4), "labels": torch.from_numpy(r.labels).long(),
            "iscrowd": torch.from_numpy(r.iscrowd.astype("int64")), "area": torch.from_numpy(r.area).float()}
           for r in dataset.records]
    return dets, gts


def write_detections(path: Path, dets: list[dict], metas: list[dict], cat_ids: list[int]) -> None:
    """COCO results: the dataset's image and category ids, x, y, w, h in original pixels."""
    results = []
    for d, m in zip(dets, metas):
        for (x1, y1, x2, y2), s, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            results.append({"image_id": m["image_id"], "category_id": cat_ids[lab],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    path.write_text(json.dumps(results) + "\n")


def print_report(report: dict, names: list[str], source: str) -> None:
    console = Console(width=max(110, Console().width))
    table = Table(title=f"COCO metrics of {source}, {report['images']} images")
    table.add_column("metric")
    table.add_column("key")
    table.add_column("value", justify="right")
    for k in STAT_KEYS:
        table.add_row(STAT_NAMES[k], k, f"{report[k]:.4f}")
    if "voc" in report:
        table.add_row("VOC AP50, 11-point", "voc.map_50_11point", f"{report['voc']['map_50_11point']:.4f}")
        table.add_row("VOC AP50, area", "voc.map_50_area", f"{report['voc']['map_50_area']:.4f}")
    console.print(table)
    per_class = Table(title="per class (recall at IoU 0.5, 100 detections per image)")
    for col in ("class", "gt", "detections", "AP", "AP50", "recall", "F1 thr"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for c in report["per_class"]:
        cells = [f"{c[k]:.4f}" if c[k] >= 0 else "-" for k in ("ap", "ap_50", "recall_50")]
        thresh = "-" if c["f1_thresh"] is None else f"{c['f1_thresh']:.3f}"
        per_class.add_row(c["class"], str(c["gt"]), str(c["dets"]), *cells, thresh)
    console.print(per_class)
    t = report["tide"]
    errors = Table(title=f"why AP50 ({t['ap_50']:.4f}) is lost: the AP recovered by fixing each error type (TIDE)")
    errors.add_column("")
    for col in (*ERRORS, "all FP", "all FN"):
        errors.add_column(col, justify="right")
    keys = [*ERRORS, "fp", "fn"]
    errors.add_row("all classes", *(f"{t['delta'][k]:.4f}" for k in keys))
    errors.add_row("count", *(str(t["counts"][k]) for k in ERRORS), "", "")
    for c in t["per_class"]:
        if c["ap"] >= 0:
            errors.add_row(c["class"], *(f"{c['delta'][k]:.4f}" for k in keys))
    console.print(errors)
