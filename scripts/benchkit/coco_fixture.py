"""Synthetic COCO ground truth and detections, and pycocotools' own statistics of them: the data and the
reference of the parity test (tests/evaluation/test_coco_eval.py) and of the speed benchmark (scripts/bench_eval.py).
pycocotools is a test-only dependency (the `dev` extra), imported when its statistics are asked for.

Naming: n = objects of an image.
"""

import numpy as np
import torch

from detcli.evaluation.coco import CocoEvaluation


def fixture(seed=0, images=40, classes=3):
    """Per image gt (some crowd, areas across small / medium / large) and noisy detections with misses,
    duplicates and false positives."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.choice([12.0, 50.0, 150.0], (n, 1)) * rng.uniform(0.6, 1.4, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, classes, n)
        crowd = (rng.uniform(size=n) < 0.1).astype(np.int64)
        keep = rng.uniform(size=n) < 0.8  # missed otherwise
        d_boxes = boxes[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
        d_labels = np.where(rng.uniform(size=int(keep.sum())) < 0.9, labels[keep], (labels[keep] + 1) % classes)
        extra = int(rng.integers(0, 4))  # false positives and duplicates
        fp = np.concatenate([rng.uniform(0, 400, (extra, 2)), rng.uniform(0, 400, (extra, 2)) + 20], 1)
        fp = np.concatenate([np.minimum(fp[:, :2], fp[:, 2:]), np.maximum(fp[:, :2], fp[:, 2:])], 1)
        d_boxes = np.concatenate([d_boxes, fp, d_boxes[:1] + 2])
        d_labels = np.concatenate([d_labels, rng.integers(0, classes, extra), d_labels[:1]])
        gts.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                    "iscrowd": torch.tensor(crowd), "area": torch.tensor(wh.prod(1))})
        dets.append({"boxes": torch.tensor(d_boxes, dtype=torch.float32),
                     "scores": torch.tensor(rng.uniform(0.05, 1, len(d_boxes)), dtype=torch.float32),
                     "labels": torch.tensor(d_labels)})
    return gts, dets


def pycocotools_stats(ev: CocoEvaluation) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {"images": ev.images, "annotations": ev.gts,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(ev.class_names)]}
    gt.createIndex()
    dt = gt.loadRes([{k: v for k, v in d.items() if k != "id"} for d in ev.dets])
    e = COCOeval(gt, dt, "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e.stats
