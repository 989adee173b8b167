"""COCO evaluation speed: detcli's evaluator (detcli/evaluation/coco.py: faster-coco-eval's C++ COCOeval)
against pycocotools' COCOeval on the same ground truth and detections (synthetic: objects of several sizes and
classes, noisy detections with misses, duplicates and false positives), measured in the same run; also checks
that the 12 statistics agree (the parity test is tests/evaluation/test_coco_eval.py). pycocotools is a test-only
dependency (the `dev` extra).

    python scripts/bench_eval.py                          # 500 images, ~5000 detections
    python scripts/bench_eval.py --images 5000 --classes 80
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchkit.coco_fixture import fixture, pycocotools_stats  # the parity test's data and reference
from detcli.evaluation.coco import STAT_KEYS, CocoEvaluation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/bench/eval.json")
    args = p.parse_args()
    gts, dets = fixture(seed=0, images=args.images, classes=args.classes)
    names = [str(k) for k in range(args.classes)]

    def ours():
        ev = CocoEvaluation(names)
        ev.update(dets, gts)
        stats = ev.compute().stats
        return ev, np.array([stats[k] for k in STAT_KEYS])

    ev, stats = ours()
    best = {"detcli": float("inf"), "pycocotools": float("inf")}
    for _ in range(args.rounds):  # alternate, keep each one's best round
        t = time.perf_counter()
        _, stats = ours()
        best["detcli"] = min(best["detcli"], time.perf_counter() - t)
        t = time.perf_counter()
        reference = quiet(pycocotools_stats, ev)  # from the same COCO dicts (building them is not timed)
        best["pycocotools"] = min(best["pycocotools"], time.perf_counter() - t)
    diff = float(np.abs(stats - reference).max())
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"COCO evaluation, {args.images} images, {len(ev.dets)} detections, {args.classes} classes")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("detcli (s)", f"{best['detcli']:.3f}")
    table.add_row("pycocotools (s)", f"{best['pycocotools']:.3f}")
    table.add_row("detcli speedup over pycocotools (target > 1)", f"{best['pycocotools'] / best['detcli']:.1f}x")
    table.add_row("largest difference of the 12 statistics", f"{diff:.1e}")
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "detections": len(ev.dets), "seconds": best,
                                          "speedup": best["pycocotools"] / best["detcli"],
                                          "max_stat_diff": diff}, indent=2) + "\n")
    print(f"written {args.out}")


def quiet(fn, *args):
    """pycocotools prints its progress and summary: kept out of the table's way."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


if __name__ == "__main__":
    main()
