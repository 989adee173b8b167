"""Issue 18's shipped thresholds and worst images, end to end on the toy run: training stores the per-class
F1-optimal score thresholds in the checkpoint, `detcli eval` reports them (metrics.json, the "F1 thr"
column) and draws the worst images into worst/, `detcli export` copies them into the sidecar, and
`detcli predict` applies them (torch and onnx) unless predict.score_thresh is given; a checkpoint without
them still predicts at 0.3."""

import json
from pathlib import Path

import pytest
import torch
from conftest import detcli


def meta_thresholds(path: Path) -> list:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]["score_thresholds"]


def with_meta(src: Path, dst: Path, thresholds) -> Path:
    """A copy of the checkpoint `src` with meta["score_thresholds"] replaced (removed when None)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["meta"].pop("score_thresholds")
    if thresholds is not None:
        ckpt["meta"]["score_thresholds"] = thresholds
    torch.save(ckpt, dst)
    return dst


def categories(run: Path) -> set[int]:
    return {p["category_id"] for p in json.loads((run / "predictions.json").read_text())}


def test_training_stores_and_eval_reports_the_f1_thresholds(trained_run, tmp_path):
    best, last = (trained_run / "checkpoints" / f"{n}.pt" for n in ("best", "last"))
    for path in (best, last):
        stored = meta_thresholds(path)
        assert len(stored) == 3 and all(t is None or 0 <= t <= 1 for t in stored)
    proc = detcli("eval", f"checkpoint={best}", "worst=2", f"hydra.run.dir={tmp_path}")
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["score_thresholds"] == meta_thresholds(best)  # the same model on the same val set
    assert [c["f1_thresh"] for c in report["per_class"]] == report["score_thresholds"] and "F1 thr" in proc.stdout
    drawn = sorted(p.name for p in (tmp_path / "worst").iterdir())
    ranked = report["worst"]
    assert len(ranked) == 2 and ranked[0]["missed"] + ranked[0]["false"] >= ranked[1]["missed"] + ranked[1]["false"]
    assert drawn == sorted(f"{w['rank']}_{Path(w['file_name']).stem}.jpg" for w in ranked)
    assert (tmp_path / "worst" / drawn[0]).read_bytes()[:2] == b"\xff\xd8"  # jpeg


def test_eval_of_a_results_file_finds_the_planted_thresholds_and_worst_image(trained_run, cache_dir, tmp_path):
    root = next(cache_dir.glob("toy_*_n32_128"))
    ann = json.loads((root / "val.json").read_text())
    # every object found exactly, squares (id 2) at 0.6, the others at 0.9; one false circle at 0.95 in the
    # first image: circle F1 is 0 at 0.95 and best at 0.9, square 0.6, triangle 0.9
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.6 if a["category_id"] == 2 else 0.9} for a in ann["annotations"]]
    first = ann["images"][0]
    results.append({"image_id": first["id"], "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.95})
    (tmp_path / "planted.json").write_text(json.dumps(results))
    detcli("eval", f"detections={tmp_path}/planted.json", f"checkpoint={trained_run}/checkpoints/best.pt",
           "plots=false", f"hydra.run.dir={tmp_path}/e")
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["score_thresholds"] == pytest.approx([0.9, 0.6, 0.9], abs=1e-6)
    assert [(w["file_name"], w["missed"], w["false"]) for w in report["worst"]] == [(first["file_name"], 0, 1)]
    assert [p.name for p in (tmp_path / "e" / "worst").iterdir()] == [f"1_{Path(first['file_name']).stem}.jpg"]


def test_export_ships_and_predict_applies_the_thresholds(trained_run, cache_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    source = f"source={next(cache_dir.glob('toy_*_n32_128')) / 'val'}"
    ckpt = with_meta(trained_run / "checkpoints" / "last.pt", tmp_path / "shipped.pt", [1.01, 0.0, 0.0])
    detcli("predict", f"checkpoint={ckpt}", source, "save_images=false", f"hydra.run.dir={tmp_path}/p")
    assert categories(tmp_path / "p") == {2, 3}  # no circle reaches 1.01
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["score_thresholds"] == pytest.approx({"circle": 1.01, "square": 0.0, "triangle": 0.0})
    detcli("predict", f"checkpoint={ckpt}", source, "predict.score_thresh=0.0", "save_images=false",
           f"hydra.run.dir={tmp_path}/given")
    assert categories(tmp_path / "given") == {1, 2, 3}  # predict.score_thresh overrides them

    detcli("export", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}/x")
    sidecar = json.loads((tmp_path / "x" / "model.onnx.json").read_text())
    assert sidecar["score_thresholds"] == pytest.approx([1.01, 0.0, 0.0])
    detcli("predict", "predict.backend=onnx", f"predict.onnx={tmp_path}/x/model.onnx", source, "save_images=false",
           f"hydra.run.dir={tmp_path}/onnx")
    assert categories(tmp_path / "onnx") == {2, 3}

    older = with_meta(trained_run / "checkpoints" / "last.pt", tmp_path / "older.pt", None)
    detcli("predict", f"checkpoint={older}", source, "save_images=false", f"hydra.run.dir={tmp_path}/older")
    summary = json.loads((tmp_path / "older" / "summary.json").read_text())
    assert summary["score_thresholds"] == pytest.approx({"circle": 0.3, "square": 0.3, "triangle": 0.3})
