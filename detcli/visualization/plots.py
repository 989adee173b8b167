"""The report's figures, drawn with matplotlib's Agg backend (no display needed): precision-recall curves at
IoU 0.5 and over 0.5:0.95, per class and overall, the confusion matrix, a run's training curves (losses, lr,
val mAP against steps), the overlaid curves of runs compared, and a dataset's box statistics.

Naming: T = IoU thresholds, R = recall points, C = classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_LEGEND = 12  # classes named in a legend; past that, the per-class curves are drawn thin and unnamed


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_curves(precision: np.ndarray, recall_points: np.ndarray, class_names: list[str], path: Path) -> None:
    """precision (T, R, C), -1 where a class has no ground truth -> a PNG with two panels (IoU 0.5, 0.5:0.95)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), dpi=100)
    valid = (precision > -1).all(axis=(0, 1))  # (C,) classes with ground truth
    named = valid.sum() <= MAX_LEGEND
    for ax, (title, curve) in zip(axes, (("IoU 0.5", precision[0]), ("IoU 0.5:0.95", precision.mean(0)))):
        for c in np.flatnonzero(valid):  # curve (R, C)
            ap = curve[:, c].mean()
            ax.plot(recall_points, curve[:, c], lw=1 if named else 0.5, alpha=0.9 if named else 0.4,
                    label=f"{class_names[c]} {ap:.3f}" if named else None)
        if valid.any():
            overall = curve[:, valid].mean(1)
            ax.plot(recall_points, overall, lw=3, color="#1f1f1f", label=f"all classes {overall.mean():.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=f"precision-recall, {title}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8, title="AP")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_matrix_plot(matrix: np.ndarray, class_names: list[str], path: Path, score_thresh: float,
                          iou_thresh: float) -> None:
    """matrix (C + 1, C + 1), rows predicted, columns true, background last -> a PNG, each true class's column
    normalised (what its objects became), the counts written in the cells when there are few classes."""
    plt = _pyplot()
    names = [*class_names, "background"]
    n = len(names)
    norm = matrix / np.maximum(matrix.sum(0, keepdims=True), 1)
    size = min(max(6, 0.45 * n + 3), 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's column")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set(xlabel="true", ylabel="predicted",
           title=f"confusion matrix (score >= {score_thresh}, IoU >= {iou_thresh})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def training_curves(train_log: list[dict], eval_log: list[dict], path: Path) -> None:
    """train_log.jsonl / eval_log.jsonl records -> a PNG of three panels: the loss and each loss term, the lr,
    and the val mAP / mAP50, against the optimizer step."""
    plt = _pyplot()
    fig, (losses, lr, val) = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
    steps = [r["step"] for r in train_log]
    terms = [k for k in (train_log[0] if train_log else {}) if k == "loss" or k.startswith("loss_")]
    for k in terms:
        losses.plot(steps, [r.get(k, np.nan) for r in train_log], lw=2.5 if k == "loss" else 1.2, label=k)
    lr.plot(steps, [r.get("lr", np.nan) for r in train_log], color="#d62728")
    eval_steps = [r["step"] for r in eval_log]
    for k, style in (("map", "o-"), ("map_50", "s--")):
        val.plot(eval_steps, [r.get(k, np.nan) for r in eval_log], style, ms=4, label=k)
    _label(losses, "training loss", "loss", legend=bool(terms))
    _label(lr, "learning rate", "lr", legend=False)
    _label(val, "validation", "mAP", legend=bool(eval_log))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def compare_curves(runs: list[tuple[str, list[dict], list[dict]]], path: Path) -> None:
    """(name, train_log, eval_log) per run -> a PNG of two panels, the runs overlaid: val mAP and the
    training loss against the optimizer step."""
    plt = _pyplot()
    fig, (val, losses) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    for name, train_log, eval_log in runs:
        line, = val.plot([r["step"] for r in eval_log], [r.get("map", np.nan) for r in eval_log], "o-", ms=3,
                         label=name)
        losses.plot([r["step"] for r in train_log], [r.get("loss", np.nan) for r in train_log], lw=1.2,
                    color=line.get_color(), label=name)
    _label(val, "val mAP", "mAP", legend=bool(runs))
    _label(losses, "training loss", "loss", legend=bool(runs))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def box_statistics(records: list, class_names: list[str], split: str, path: Path) -> None:
    """ImageRecords (original pixels) -> a PNG of six panels: the box sizes (sqrt of the area, COCO's small /
    medium / large limits marked) and aspect ratios (log2 w / h) over all boxes, and per class as heat maps
    (each class's row normalised), the box centres in image-relative coordinates, and the boxes per class."""
    plt = _pyplot()
    boxes = np.concatenate([r.boxes for r in records]).reshape(-1, 4).astype(np.float64)  # (n, 4)
    labels = np.concatenate([r.labels for r in records]).astype(np.int64)  # (n,)
    sizes = np.array([[r.width, r.height] for r in records for _ in range(len(r.boxes))], dtype=np.float64)
    sizes = sizes.reshape(-1, 2)  # (n, 2)
    w, h = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3), np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    side, aspect = np.sqrt(w * h), np.log2(w / h)
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2) / np.maximum(sizes, 1)  # (n, 2) in [0, 1]
    C = len(class_names)
    low = max(0.5, side.min(initial=1.0) * 0.9)
    side_bins = np.geomspace(low, max(low * 2, side.max(initial=2.0) * 1.01), 25)
    aspect_bins = np.linspace(-4, 4, 25)
    tall = min(max(4.5, 0.22 * C + 2), 24)
    fig, axes = plt.subplots(2, 3, figsize=(17, tall * 2), dpi=90)
    (size_ax, aspect_ax, centre_ax), (size_cls, aspect_cls, count_ax) = axes
    size_ax.hist(side, bins=side_bins, color="#1f77b4")
    size_ax.set_xscale("log")
    for limit in (32, 96):
        size_ax.axvline(limit, color="k", ls="--", lw=0.8)
    size_ax.set(title=f"{split}: box size, {len(side)} boxes (COCO small < 32 < medium < 96 < large)",
                xlabel="sqrt(box area), original pixels", ylabel="boxes")
    aspect_ax.hist(np.clip(aspect, -4, 4), bins=aspect_bins, color="#ff7f0e")
    aspect_ax.set(title="aspect ratio", xlabel="log2(width / height), clipped to +-4", ylabel="boxes")
    heat, _, _ = np.histogram2d(centre[:, 1].clip(0, 1), centre[:, 0].clip(0, 1), bins=32, range=[[0, 1], [0, 1]])
    im = centre_ax.imshow(heat, extent=(0, 1, 1, 0), cmap="magma")
    fig.colorbar(im, ax=centre_ax, fraction=0.046, pad=0.04, label="boxes")
    centre_ax.set(title="box centres", xlabel="x / image width", ylabel="y / image height")
    for ax, values, bins, title, xlabel, log_x in (
        (size_cls, side, side_bins, "box size per class", "sqrt(box area), original pixels", True),
        (aspect_cls, np.clip(aspect, -4, 4), aspect_bins, "aspect ratio per class", "log2(width / height)", False),
    ):
        rows = np.stack([np.histogram(values[labels == k], bins=bins)[0] for k in range(C)]).astype(np.float64)
        rows /= np.maximum(rows.sum(1, keepdims=True), 1)  # (C, bins): each class's share per bin
        ax.pcolormesh(bins, np.arange(C + 1), rows, cmap="Blues", vmin=0)
        if log_x:
            ax.set_xscale("log")
        ax.set_yticks(np.arange(C) + 0.5, class_names, fontsize=7 if C > 20 else 9)
        ax.invert_yaxis()
        ax.set(title=title + " (each row normalised)", xlabel=xlabel)
    counts = np.bincount(labels, minlength=C)[:C]
    count_ax.barh(np.arange(C), counts, color="#2ca02c")
    count_ax.set_yticks(np.arange(C), class_names, fontsize=7 if C > 20 else 9)
    count_ax.invert_yaxis()
    count_ax.set(title="boxes per class", xlabel="boxes")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _label(ax, title: str, ylabel: str, legend: bool) -> None:
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
