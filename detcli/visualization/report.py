"""The end-of-training report: curves.png (losses, lr, val mAP against steps, from train_log.jsonl and
eval_log.jsonl) and report.html in the run folder. The page is self-contained (inline CSS, every image a
base64 PNG data URI, no script): the config keys that differ from the defaults, the curves, the final
metrics with the per-class table, the PR curves, the TIDE breakdown and a grid of predictions on up to
8 val images. Everything comes from the trainer's last evaluation (detcli/evaluation/evaluator.py `Evaluation`):
no model runs again here.

Naming: N = images in the grid, D = detections of an image.
"""

from __future__ import annotations

import base64
import math
import tempfile
from datetime import datetime
from html import escape
from pathlib import Path

import torch
from omegaconf import DictConfig

from detcli import runlog
from detcli.config import config_diff, default_config, short
from detcli.data.base import read_image
from detcli.evaluation.coco import STAT_NAMES
from detcli.evaluation.evaluator import Evaluation
from detcli.evaluation.tide import ERRORS, tide
from detcli.visualization.draw import draw_boxes
from detcli.visualization.plots import pr_curves, training_curves

GRID_IMAGES = 8  # val images drawn with their predictions
GRID_SIDE = 256  # px: each image is fitted into a square of this side
SCORE_THRESH = 0.3  # predictions drawn in the grid: at least this score, the best MAX_DRAWN of them
MAX_DRAWN = 20
SECTIONS = ("config", "curves", "metrics", "per-class", "pr-curves", "tide", "predictions")

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}p.note{color:#666}code{background:#f6f6f6;padding:0 .2em}"""


def write_report(run_dir: Path, cfg: DictConfig, evaluation: Evaluation | None, class_names: list[str],
                 val_set=None) -> list[Path]:
    """curves.png and report.html in `run_dir`; `evaluation` is the run's last one (None when this session
    evaluated nothing: the metrics then come from eval_log.jsonl alone)."""
    run_dir = Path(run_dir)
    train_log, eval_log = runlog.train_log(run_dir), runlog.eval_log(run_dir)
    curves = run_dir / "curves.png"
    training_curves(train_log, eval_log, curves)
    parts = [_header(run_dir, train_log, eval_log), _config_section(cfg),
             _section("curves", "Training curves", _img(curves.read_bytes(), "training curves"))]
    parts += _evaluation_sections(evaluation, eval_log, class_names, val_set)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>detcli report: "
            f"{escape(run_dir.name)}</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    html = run_dir / "report.html"
    html.write_text(page, encoding="utf-8")
    return [curves, html]


def _header(run_dir: Path, train_log: list[dict], eval_log: list[dict]) -> str:
    steps = train_log[-1]["step"] if train_log else (eval_log[-1]["step"] if eval_log else 0)
    best = max((r["map"] for r in eval_log), default=None)
    best_text = f"best val mAP {best:.4f}" if best is not None else "no evaluation logged"
    return (f"<h1>detcli training report</h1><p>{escape(str(run_dir))}<br>{steps} steps, {best_text}; "
            f"written {datetime.now():%Y-%m-%d %H:%M}</p>")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{escape(str(c))}</td>" if i >= numeric_from else
                                    f"<td>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>\n"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _config_section(cfg: DictConfig) -> str:
    rows = config_diff(default_config("train"), cfg)
    body = (_table(["key", "default", "this run"], [[k, short(a, 60), short(b, 60)] for k, a, b in rows], 3)
            if rows else _note("Every key has its default value."))
    intro = _note(f"{len(rows)} keys differ from `detcli train` with no overrides; config.yaml holds them all.")
    return _section("config", "Config: what differs from the defaults", intro + body)


def _evaluation_sections(evaluation: Evaluation | None, eval_log: list[dict], class_names: list[str],
                         val_set) -> list[str]:

    final = eval_log[-1] if eval_log else {}
    stats = evaluation.metrics if evaluation is not None else {k: final[k] for k in STAT_NAMES if k in final}
    step = f" at step {final['step']}" if "step" in final else ""
    metrics = _table(["metric", "key", "value"], [[STAT_NAMES[k], k, f"{v:.4f}"] for k, v in stats.items()], 2)
    out = [_section("metrics", f"Final metrics{step} (val set, EMA weights when enabled)",
                    metrics if stats else _note("No evaluation was logged."))]
    if evaluation is None:
        missing = _note("This session ran no evaluation (a resumed run that was already done): "
                        "`detcli eval checkpoint=checkpoints/best.pt` gives the full evaluation report.")
        return out + [_section(a, t, missing) for a, t in (("per-class", "Per class"), ("pr-curves", "PR curves"),
                                                           ("tide", "TIDE"), ("predictions", "Predictions"))]
    out.append(_section("per-class", "Per class (recall at IoU 0.5, 100 detections per image)",
                        _per_class(evaluation)))
    out.append(_section("pr-curves", "Precision-recall curves", _pr_image(evaluation, class_names)))
    out.append(_section("tide", "Why AP50 is lost: the AP recovered by fixing each error type (TIDE)",
                        _tide_table(evaluation, class_names)))
    out.append(_section("predictions", f"Predictions on val images (score >= {SCORE_THRESH}; ground truth in white)",
                        _predictions(evaluation, class_names, val_set)))
    return out


def _per_class(evaluation: Evaluation) -> str:
    def cell(v: float) -> str:
        return f"{v:.4f}" if v >= 0 else "-"

    rows = [[c["class"], c["gt"], c["dets"], cell(c["ap"]), cell(c["ap_50"]), cell(c["recall_50"])]
            for c in evaluation.result.per_class]
    return _table(["class", "gt", "detections", "AP", "AP50", "recall"], rows)


def _pr_image(evaluation: Evaluation, class_names: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pr_curve.png"
        pr_curves(evaluation.result.precision, evaluation.result.recall_points, class_names, path)
        return _img(path.read_bytes(), "precision-recall curves")


def _tide_table(evaluation: Evaluation, class_names: list[str]) -> str:
    t = tide(evaluation.dets, evaluation.gts, len(class_names))
    keys = [*ERRORS, "fp", "fn"]
    rows = [["all classes", *(f"{t['delta'][k]:.4f}" for k in keys)],
            ["count", *(t["counts"][k] for k in ERRORS), "", ""]]
    rows += [[name, *(f"{c['delta'][k]:.4f}" for k in keys)] for name, c in zip(class_names, t["per_class"])
             if c["ap"] >= 0]
    return _note(f"AP50 {t['ap']:.4f}; all FP / all FN fix every false positive / every missed object at once.") + \
        _table(["", *ERRORS, "all FP", "all FN"], rows)


def _predictions(evaluation: Evaluation, class_names: list[str], val_set) -> str:
    """Up to GRID_IMAGES val images with their predictions (and ground truth) drawn, as one PNG grid."""
    from torchvision.io import encode_png
    from torchvision.utils import make_grid

    image_dir = getattr(val_set, "image_dir", None)
    if image_dir is None or not evaluation.metas:
        return _note("No val images to draw.")
    drawn = [_draw(image_dir / m["file_name"], d, g, class_names)
             for d, g, m in list(zip(evaluation.dets, evaluation.gts, evaluation.metas))[:GRID_IMAGES]]
    grid = make_grid(torch.stack(drawn), nrow=min(4, math.ceil(math.sqrt(len(drawn))) + 1), padding=4,
                     pad_value=255)  # (3, H, W)
    return _img(bytes(encode_png(grid).numpy()), "predictions on val images")


def _draw(path: Path, det: dict, gt: dict, class_names: list[str]) -> torch.Tensor:
    """An image (3, GRID_SIDE, GRID_SIDE) uint8: the file with ground truth in white and the predictions in the
    class colours, fitted into the square (padded in white)."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes

    image = read_image(path)  # (3, H, W)
    order = det["scores"].argsort(descending=True)  # (D,)
    keep = order[det["scores"][order] >= SCORE_THRESH][:MAX_DRAWN]
    boxes, labels, scores = det["boxes"][keep], det["labels"][keep], det["scores"][keep]  # (D, 4), (D,), (D,)
    if len(gt["boxes"]):
        image = draw_bounding_boxes(image, gt["boxes"].float(), colors="white", width=1)
    image = draw_boxes(image, boxes, labels, class_names, scores)
    h, w = image.shape[-2:]
    scale = GRID_SIDE / max(h, w)
    image = F.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    h, w = image.shape[-2:]
    return F.pad(image, [0, 0, GRID_SIDE - w, GRID_SIDE - h], fill=255)
