"""`detcli eval ... eval.label_issues=true`: the likely label errors of the evaluated split, from the model's
detections (detcli/evaluation/label_issues.py, cleanlab's scores): label_issues.json (every scored box per
kind, the most likely first), a per-kind count of those under `eval.label_issues_thresh` in metrics.json and
the summary, and the first `eval.label_issues_drawn` of each kind drawn into label_issues/<kind>_<rank>_<stem>.jpg
(the label green, the model's box red)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from detcli.evaluation.label_issues import KINDS, confident_score, find_label_issues
from detcli.visualization.worst import draw_issue


def write_label_issues(dets: list[dict], gts: list[dict], metas: list[dict], names: list[str], image_dir: Path,
                       options: DictConfig, thresholds: list[float | None], out: Path) -> dict:
    """Finds, writes, draws and prints the label issues; returns the summary for metrics.json. `thresholds`: the
    per-class F1-optimal score thresholds (for eval.label_issues_confident=auto)."""
    confident = confident_score(options.label_issues_confident, thresholds)
    issues = find_label_issues(dets, gts, metas, names, confident)
    thresh = float(options.label_issues_thresh)
    counts = {kind: sum(i["score"] < thresh for i in issues[kind]) for kind in KINDS}
    (out / "label_issues.json").write_text(json.dumps({"thresh": thresh, "confident": confident, "counts": counts,
                                                       "issues": issues},
                                                      indent=1) + "\n")
    drawn = 0
    for kind in KINDS:
        for rank, issue in enumerate(issues[kind][: int(options.label_issues_drawn)], 1):
            target = out / "label_issues" / f"{kind}_{rank}_{Path(issue['file_name']).stem}.jpg"
            drawn += draw_issue(image_dir / issue["file_name"], issue, target)
    table = Table(title=f"likely label issues (cleanlab score < {thresh:g}; label_issues.json ranks every box)")
    table.add_column("kind")
    table.add_column("boxes", justify="right")
    for kind in KINDS:
        table.add_row(kind, str(counts[kind]))
    Console().print(table)
    return {"thresh": thresh, "confident": round(confident, 4), "counts": counts, "drawn": drawn,
            "file": str(out / "label_issues.json")}
