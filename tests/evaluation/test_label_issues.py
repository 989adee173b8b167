"""Likely label errors (detcli/evaluation/label_issues.py, cleanlab): on 20 images a model detects perfectly,
the planted errors (a swapped class, a dropped box, a box moved by half its size) rank first of their kind;
`detcli eval eval.label_issues=true` writes label_issues.json, the counts and the drawings."""

import json

import torch
from conftest import detcli

from detcli.evaluation.label_issues import confident_score, find_label_issues

NAMES = ["cat", "dog", "car"]


def scene(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separate boxes of the three classes, placed by image index."""
    boxes = torch.tensor([[10.0, 10, 50, 50], [80, 20, 140, 70], [30, 100, 110, 150]]) + i
    return boxes, torch.tensor([0, 1, 2])


def test_planted_errors_rank_first_of_their_kind():
    dets, gts, metas = [], [], []
    for i in range(20):
        boxes, labels = scene(i)
        dets.append({"boxes": boxes.clone(), "scores": torch.tensor([0.9, 0.85, 0.8]), "labels": labels.clone()})
        gts.append({"boxes": boxes.clone(), "labels": labels.clone()})
        metas.append({"file_name": f"im{i}.png", "image_id": i})
    gts[3]["labels"][1] = 0  # the dog labelled cat
    gts[7] = {"boxes": gts[7]["boxes"][[0, 2]], "labels": gts[7]["labels"][[0, 2]]}  # the dog's box dropped
    gts[11]["boxes"][2] += torch.tensor([40.0, 25, 40, 25])  # the car moved by half its size
    issues = find_label_issues(dets, gts, metas, NAMES, confident_score("auto", [0.5, 0.5, 0.5]))
    top = {kind: (issues[kind][0]["image_id"], issues[kind][0]["class"]) for kind in issues}
    assert top == {"wrong_class": (3, "cat"), "missing": (7, "dog"), "bad_location": (11, "car")}
    assert issues["wrong_class"][0]["model_class"] == "dog"
    assert issues["missing"][0]["box"] == dets[7]["boxes"][1].tolist()


def test_confident_score_auto_is_the_median_f1_threshold():
    assert confident_score("auto", [0.2, None, 0.6, 0.4]) == 0.4
    assert confident_score("auto", [None]) == 0.5
    assert confident_score(0.7, [0.1]) == 0.7


def test_eval_writes_label_issues(toy_run, tmp_path):
    run = toy_run("fcos")
    detcli("eval", f"checkpoint={run / 'checkpoints' / 'last.pt'}", "eval.label_issues=true", "eval.label_issues_drawn=2",
           "eval.split=train", "worst=0", "plots=false", f"hydra.run.dir={tmp_path}")
    report = json.loads((tmp_path / "metrics.json").read_text())
    issues = json.loads((tmp_path / "label_issues.json").read_text())
    assert set(report["label_issues"]["counts"]) == set(issues["issues"]) == {"missing", "wrong_class", "bad_location"}
    assert report["images"] == 32  # the train split of TINY
    scored = issues["issues"]["bad_location"]
    assert scored and [s["score"] for s in scored] == sorted(s["score"] for s in scored)
    assert len(list((tmp_path / "label_issues").glob("bad_location_*.jpg"))) == 2
