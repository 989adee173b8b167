"""Each non-default head through every subcommand, as a user runs them: train (its named loss terms in
train_log.jsonl), eval, predict, export (ONNX with the whole decoding and NMS in the graph and a dynamic
batch axis; TorchScript). Each head's own cases (exact resume across its phases, the toy budget) are in
test_<head>_cli.py."""

import json

import pytest
import torch
from conftest import detcli

HEADS = {  # head -> (config classes its run folder names, loss terms, ONNX ops its graph holds)
    "yolox": ({"PAFPN", "YOLOXCriterion", "SimOTAAssigner"}, {"loss_box", "loss_obj", "loss_cls", "loss_l1"},
              {"NonMaxSuppression"}),
    "faster_rcnn": ({"FasterRCNNHead", "FasterRCNNCriterion", "MaxIoUMatcher", "maxpool"},
                    {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}, {"NonMaxSuppression", "RoiAlign"}),
}


@pytest.fixture(scope="module", params=list(HEADS))
def head_run(request, toy_run):
    return request.param, toy_run(request.param)


def test_train_logs_the_head_terms(head_run):
    head, run = head_run
    names, terms, _ = HEADS[head]
    cfg = (run / "config.yaml").read_text()
    assert all(name in cfg for name in names)
    record = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])
    assert terms <= set(record)


def test_eval_and_predict(head_run, tmp_path, cache_dir):
    _, run = head_run
    detcli("eval", f"checkpoint={run}/checkpoints/best.pt", f"hydra.run.dir={tmp_path}/eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 <= metrics["map_50"] <= 1
    val = next(cache_dir.glob("toy_*_n32_*")) / "val"
    detcli("predict", f"checkpoint={run}/checkpoints/best.pt", f"source={val}", "predict.score_thresh=0.0",
           f"hydra.run.dir={tmp_path}/pred")
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= {1, 2, 3}


def test_export_onnx_matches_pytorch_at_any_batch(head_run, tmp_path):
    head, run = head_run
    out = tmp_path / "export"
    proc = detcli("export", f"checkpoint={run}/checkpoints/best.pt", "format=onnx", "batch_size=2",
                  f"hydra.run.dir={out}")
    assert "largest |box difference|" in proc.stdout  # the export checks itself against PyTorch (tolerance)
    import onnx

    from detcli.deploy.ort import inference_session

    assert HEADS[head][2] <= {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    session = inference_session(out / "model.onnx")
    for batch in (1, 3):  # traced at 2: the batch axis stays dynamic through every stage and NMS
        boxes, scores, labels, num = session.run(None, {"images": torch.rand(batch, 3, 128, 128).numpy() * 255})
        assert boxes.shape == (batch, 100, 4) and scores.shape == (batch, 100) and labels.shape == (batch, 100)
        assert num.shape == (batch,) and (num == (labels >= 0).sum(1)).all()  # num_dets: the real rows


def test_export_torchscript(head_run, tmp_path):
    _, run = head_run
    detcli("export", f"checkpoint={run}/checkpoints/best.pt", "format=torchscript", f"hydra.run.dir={tmp_path}")
    assert (tmp_path / "model.torchscript.pt").is_file()
