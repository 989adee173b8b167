"""The accuracy benchmark's report (scripts/bench_accuracy.py): one table of each run's mAP, mAP50,
wall-clock and training images/s, and one of the differences between the runs compared.
"""

from __future__ import annotations

from benchkit.common import report_rows


def compare(a: dict, b: dict) -> dict:
    """a against b: AP differences in points (x 100), mAP and wall-clock ratios."""
    return {"ap_points": 100 * (a["map"] - b["map"]), "ap50_points": 100 * (a["map_50"] - b["map_50"]),
            "map_ratio": a["map"] / b["map"] if b["map"] > 0 else None,
            "wall_ratio": a["wall_s"] / b["wall_s"]}


def show(results: dict, comparisons: dict, title: str) -> None:
    rows = [[f"{name} ({r['code']})", f"{r['map']:.4f}", f"{r['map_50']:.4f}", f"{r['wall_s']:.0f} s",
             f"{r['train_img_per_s']:.2f}" if r["train_img_per_s"] else "-"] for name, r in results.items()]
    report_rows(title, ["run", "mAP", "mAP50", "wall-clock", "img/s"], rows)
    if comparisons:
        rows = [[name, f"{c['ap_points']:+.2f}", f"{c['ap50_points']:+.2f}",
                 f"{c['map_ratio']:.2f}x" if c["map_ratio"] is not None else "-", f"{c['wall_ratio']:.2f}x"]
                for name, c in comparisons.items()]
        report_rows("differences", ["", "AP pts", "AP50 pts", "mAP ratio", "time ratio"], rows)
