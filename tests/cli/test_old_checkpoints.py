"""Checkpoints from before the package move (tests/fixtures/*_0f85d93.pt) still load, give the same
detections, and run through eval, predict and export."""

import json
from pathlib import Path

import pytest
import torch
from conftest import detcli

from detcli.build import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HEADS = ["fcos", "yolox", "faster_rcnn"]


@pytest.mark.parametrize("head", HEADS)
def test_old_checkpoint_gives_the_same_detections(head):
    expected = torch.load(FIXTURES / "outputs_0f85d93.pt", weights_only=True)
    model, *_ = load_model(str(FIXTURES / f"{head}_0f85d93.pt"), "cpu", {"score_thresh": 0.0})
    with torch.no_grad():
        dets = model(expected["images"])
    want = expected[head]
    assert dets.keys() == want.keys()
    for key in ("boxes", "scores"):
        torch.testing.assert_close(dets[key], want[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dets["labels"], want["labels"])


def test_old_checkpoint_evaluates_predicts_and_exports(tmp_path, cache_dir):
    ckpt = FIXTURES / "fcos_0f85d93.pt"
    root = cache_dir / "toy_v2_seed0_n32_128"  # the fixture's data paths were removed: name them, as on a new machine
    data = [f"data.root={root}", *(f"data.{split}_{kind}={root}/{split}{ext}" for split in ("train", "val")
                                   for kind, ext in (("ann", ".json"), ("images", "")))]
    detcli("eval", f"checkpoint={ckpt}", *data, f"hydra.run.dir={tmp_path / 'eval'}")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["map"] <= 1.0
    images = root / "val"
    detcli("predict", f"checkpoint={ckpt}", f"source={images}", "predict.score_thresh=0.0", f"hydra.run.dir={tmp_path / 'predict'}")
    preds = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    assert len(preds) > 0
    detcli("export", f"checkpoint={ckpt}", "format=onnx", f"hydra.run.dir={tmp_path / 'export'}")
    assert list((tmp_path / "export").glob("*.onnx"))
