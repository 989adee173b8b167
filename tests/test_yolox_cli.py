"""head=yolox through every subcommand, as a user runs them: train, eval, predict, export (ONNX with NMS in
the graph, TorchScript), and an exact resume across the epoch where mosaic closes and the L1 term opens."""

import json
import signal

import pytest
import torch
from conftest import TINY, detcli
from test_trainer import FAST, losses, start, wait_for_step

YOLOX = ["head=yolox"]


@pytest.fixture(scope="module")
def yolox_run(tmp_path_factory, cache_dir):
    run = tmp_path_factory.mktemp("yolox")
    detcli("train", *TINY, *YOLOX, "trainer.max_steps=6", "trainer.log_interval=2", f"hydra.run.dir={run}")
    return run


def test_train_logs_the_yolox_terms(yolox_run):
    cfg = (yolox_run / "config.yaml").read_text()
    assert "PAFPN" in cfg and "YOLOXCriterion" in cfg and "SimOTAAssigner" in cfg
    record = json.loads((yolox_run / "train_log.jsonl").read_text().splitlines()[-1])
    assert {"loss_box", "loss_obj", "loss_cls", "loss_l1"} <= set(record)


def test_eval_and_predict(yolox_run, tmp_path, cache_dir):
    detcli("eval", f"checkpoint={yolox_run}/checkpoints/best.pt", f"hydra.run.dir={tmp_path}/eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 <= metrics["map_50"] <= 1
    val = next(cache_dir.glob("toy_*_n32_*")) / "val"
    detcli("predict", f"checkpoint={yolox_run}/checkpoints/best.pt", f"source={val}", "predict.score_thresh=0.0",
           f"hydra.run.dir={tmp_path}/pred")
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= {1, 2, 3}


def test_export_onnx_with_nms_matches_pytorch(yolox_run, tmp_path):
    out = tmp_path / "export"
    proc = detcli("export", f"checkpoint={yolox_run}/checkpoints/best.pt", "format=onnx", "batch_size=2",
                  f"hydra.run.dir={out}")
    assert "largest |box difference|" in proc.stdout  # the export checks itself against PyTorch
    import onnx
    import onnxruntime as ort

    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    session = ort.InferenceSession(str(out / "model.onnx"))
    boxes, scores, labels = session.run(None, {"images": torch.rand(3, 3, 128, 128).numpy() * 255})
    assert boxes.shape == (3, 100, 4) and scores.shape == (3, 100) and labels.shape == (3, 100)


def test_export_torchscript(yolox_run, tmp_path):
    detcli("export", f"checkpoint={yolox_run}/checkpoints/best.pt", "format=torchscript", f"hydra.run.dir={tmp_path}")
    assert (tmp_path / "model.torchscript.pt").is_file()


def test_resume_is_exact_across_the_close_of_mosaic(tmp_path, cache_dir):
    """8 steps per epoch, 3 epochs, mosaic + mixup in the first two, L1 on in the last: killed at step 11 and
    resumed, every step's loss equals the uninterrupted run's."""
    args = [*FAST, *YOLOX, "data.num_workers=1", "trainer.max_steps=24", "data.mosaic=1.0", "data.mixup=0.5",
            "data.close_mosaic=1"]
    detcli("train", *args, f"hydra.run.dir={tmp_path}/whole")
    l1 = {json.loads(x)["step"]: json.loads(x)["loss_l1"]
          for x in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()}
    assert all(l1[s] == 0 for s in range(1, 17)) and all(l1[s] > 0 for s in range(17, 25))
    proc = start(*args, f"hydra.run.dir={tmp_path}/killed")
    wait_for_step(tmp_path / "killed", 11, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    detcli("train", *args, f"hydra.run.dir={tmp_path}/killed", "resume=auto")
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 25))
    for step in range(1, 25):
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6), step


@pytest.mark.slow
def test_toy_run_reaches_map50_07_in_the_fcos_budget(tmp_path, cache_dir):
    """`detcli train experiment=toy head=yolox`: the toy preset's 300 steps, val mAP@0.5 >= 0.7."""
    detcli("train", "experiment=toy", *YOLOX, f"hydra.run.dir={tmp_path}")
    evals = [json.loads(x) for x in (tmp_path / "eval_log.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 300 and max(e["map_50"] for e in evals) >= 0.7
