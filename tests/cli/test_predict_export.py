"""Issue 16's predict and export, end to end on toy checkpoints of every head: `export format=onnx
export.nms=true` then `predict predict.backend=onnx` gives the torch backend's predictions.json; the graph
without NMS outputs every head's decoding at any input size; fp16 weights; unreadable inputs skipped and
listed; YOLO label files; the class filter; clear errors."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TOY_THRESH, detcli

from detcli.deploy.ort import inference_session

HEADS = ["fcos", "yolox", "faster_rcnn"]
@pytest.fixture(scope="module", params=HEADS)
def head_ckpt(request, toy_run):
    return request.param, toy_run(request.param) / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def fcos_ckpt(toy_run):
    return toy_run("fcos") / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def val_dir(cache_dir) -> Path:
    return next(cache_dir.glob("toy_*_n32_128")) / "val"  # TINY's set (other tests make other canvases)


def by_image(path: Path) -> dict[str, list[tuple]]:
    """predictions.json as per-file (category, x, y, w, h) rows, sorted."""
    rows: dict[str, list[tuple]] = {}
    for p in json.loads(path.read_text()):
        rows.setdefault(p["file_name"], []).append((p["category_id"], *p["bbox"]))
    return {k: sorted(v) for k, v in rows.items()}


def assert_same_detections(ref: list[tuple], got: list[tuple], atol: float = 1e-2) -> None:
    """The same labels and boxes within `atol` px, one to one: each row of `ref` pairs with the nearest unused
    row of `got` of its label (sorting alone may order boxes 1e-5 px apart differently)."""
    assert len(ref) == len(got)
    free = list(got)
    for label, *box in ref:
        diffs = [max(abs(a - b) for a, b in zip(box, g[1:])) if g[0] == label else float("inf") for g in free]
        best = min(range(len(free)), key=diffs.__getitem__)
        assert diffs[best] <= atol, (label, box, free[best])
        free.pop(best)


@pytest.mark.parametrize("fmt, graph", [("onnx", "model.onnx"), ("openvino", "model.xml")])
def test_graph_backend_gives_the_torch_predictions(head_ckpt, val_dir, tmp_path, fmt, graph):
    """`detcli export format=onnx|openvino`, then `detcli predict predict.backend=<format>`: the detections of the
    checkpoint in PyTorch (fp32: the suite's precision=auto on a CPU), image by image."""
    _, ckpt = head_ckpt
    detcli("export", f"checkpoint={ckpt}", f"format={fmt}", "export.nms=true", "batch_size=2",
           f"hydra.run.dir={tmp_path}/export")
    sidecar = json.loads((tmp_path / "export" / f"{graph}.json").read_text())
    assert sidecar["format"] == fmt
    assert sidecar["outputs"] == ["boxes", "scores", "labels", "num_dets"] and sidecar["nms"] is True
    check = sidecar["check"]  # the export checked itself on the training images, figures beside the model
    assert check["images"].startswith("train split: train_") and check["enforced"] is True
    assert check["inputs"][0]["input"] == [2, 3, 128, 128] and check["max_abs_box_diff"] <= 1e-3
    common = [f"source={val_dir}", f"predict.score_thresh={TOY_THRESH}", "save_images=false"]
    detcli("predict", f"checkpoint={ckpt}", *common, f"hydra.run.dir={tmp_path}/torch")
    detcli("predict", f"predict.backend={fmt}", f"predict.{fmt}={tmp_path}/export/{graph}", *common,
           f"hydra.run.dir={tmp_path}/{fmt}")
    ref, got = by_image(tmp_path / "torch" / "predictions.json"), by_image(tmp_path / fmt / "predictions.json")
    assert len(ref) == 8 and set(ref) == set(got)
    for name in ref:
        assert_same_detections(ref[name], got[name])
    summary = json.loads((tmp_path / fmt / "summary.json").read_text())
    assert summary["backend"] == fmt and summary["images"] == summary["predicted"] == 8
    assert summary["detections"] == sum(map(len, got.values())) > 0 and summary["skipped"] == []


def test_export_without_nms_outputs_the_decoding_at_any_size(head_ckpt, tmp_path):
    head, ckpt = head_ckpt
    detcli("export", f"checkpoint={ckpt}", "format=onnx", "export.nms=false", "export.dynamic=true", "batch_size=2",
           f"hydra.run.dir={tmp_path}")
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["outputs"] == ["boxes", "scores"] and sidecar["input"] == ["B", 3, "H", "W"]
    inputs = sidecar["check"]["inputs"]  # checked at two input sizes
    assert [f["input"] for f in inputs] == [[2, 3, 128, 128], [2, 3, 64, 128]]
    assert all(f["max_abs_box_diff"] <= 1e-3 and f["max_abs_score_diff"] <= 1e-4 for f in inputs)
    session = inference_session(tmp_path / "model.onnx")
    sizes = {}
    for hw in ((128, 128), (96, 160)):
        boxes, scores = session.run(None, {"images": torch.rand(1, 3, *hw).numpy() * 255})
        assert boxes.shape[::2] == (1, 4) and scores.shape[::2] == (1, 3) and boxes.shape[1] == scores.shape[1]
        assert 0 <= scores.min() and scores.max() <= 1
        sizes[hw] = boxes.shape[1]
    if head != "faster_rcnn":  # one row per point: R follows the input size (Faster R-CNN: RoIs x classes)
        assert sizes[(96, 160)] < sizes[(128, 128)]


def test_export_half_writes_fp16_weights(fcos_ckpt, tmp_path):
    import onnx

    detcli("export", f"checkpoint={fcos_ckpt}", "format=onnx", "export.half=true", f"hydra.run.dir={tmp_path}")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    weights = {i.name: i.data_type for i in graph.initializer}
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]
    assert conv_weights and all(weights[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # 0-255 float32 in, as ever
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["half"] is True and sidecar["check"]["enforced"] is False and "fp16" in sidecar["check"]["note"]
    boxes, scores, labels, num = inference_session(tmp_path / "model.onnx").run(
        None, {"images": torch.rand(2, 3, 128, 128).numpy() * 255})
    assert boxes.shape == (2, 100, 4) and scores.dtype.name == "float32" and (num == (labels >= 0).sum(1)).all()


def test_predict_skips_unreadable_files_and_writes_yolo_labels(fcos_ckpt, val_dir, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    good = sorted(val_dir.glob("*.jpg"))[:2]
    (src / "a.jpg").write_bytes(good[0].read_bytes())
    (src / "sub" / "b.jpg").write_bytes(good[1].read_bytes())
    (src / "broken.jpg").write_bytes(good[0].read_bytes()[:200])  # truncated
    (src / "empty.png").write_bytes(b"")
    out = tmp_path / "pred"
    proc = detcli("predict", f"checkpoint={fcos_ckpt}", f"source={src}", "predict.score_thresh=0.0", "batch_size=3",
                  "predict.save_txt=true", "predict.save_conf=true", f"hydra.run.dir={out}")
    assert "2 unreadable files skipped" in proc.stdout and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["predicted"] == 2
    assert sorted(Path(s["file"]).name for s in summary["skipped"]) == ["broken.jpg", "empty.png"]
    assert all(s["reason"] for s in summary["skipped"])
    preds = json.loads((out / "predictions.json").read_text())
    assert {Path(p["file_name"]).name for p in preds} == {"a.jpg", "b.jpg"}
    for name, txt in (("a.jpg", out / "labels" / "a.txt"), ("b.jpg", out / "labels" / "sub" / "b.txt")):
        rows = [[float(v) for v in line.split()] for line in txt.read_text().splitlines()]
        mine = [p for p in preds if Path(p["file_name"]).name == name]
        assert len(rows) == len(mine) == 100 and all(len(r) == 6 for r in rows)
        for row, p in zip(rows, mine):  # class cx cy w h (normalised to the 128 x 128 original) score
            x, y, w, h = p["bbox"]
            expected = [p["category_id"] - 1, (x + w / 2) / 128, (y + h / 2) / 128, w / 128, h / 128, p["score"]]
            assert row == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_predict_keeps_the_named_classes(fcos_ckpt, val_dir, tmp_path):
    detcli("predict", f"checkpoint={fcos_ckpt}", f"source={val_dir}", "predict.score_thresh=0.0",
           "predict.classes=[square,2]", "predict.save_txt=true", "save_images=false", f"hydra.run.dir={tmp_path}")
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= {2, 3}  # square (index 1) and triangle (index 2)
    rows = [line.split() for txt in (tmp_path / "labels").glob("*.txt") for line in txt.read_text().splitlines()]
    assert len(rows) == len(preds) and all(len(r) == 5 and r[0] in ("1", "2") for r in rows)  # no score column


def test_predict_errors_name_the_key(fcos_ckpt, val_dir, tmp_path):
    proc = detcli("predict", f"checkpoint={fcos_ckpt}", f"source={val_dir}", "predict.classes=[dog]",
                  f"hydra.run.dir={tmp_path}/a", check=False)
    assert proc.returncode == 2 and "predict.classes" in proc.stderr and "circle" in proc.stderr
    proc = detcli("predict", "predict.backend=onnx", f"source={val_dir}", f"hydra.run.dir={tmp_path}/b", check=False)
    assert proc.returncode == 2 and "predict.onnx=PATH" in proc.stderr
    detcli("export", f"checkpoint={fcos_ckpt}", "export.nms=false", f"hydra.run.dir={tmp_path}/x")
    proc = detcli("predict", "predict.backend=onnx", f"predict.onnx={tmp_path}/x/model.onnx", f"source={val_dir}",
                  f"hydra.run.dir={tmp_path}/c", check=False)
    assert proc.returncode == 2 and "export.nms=true" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_faster_rcnn_decoding_has_the_one_stage_shape():
    """FasterRCNNPostprocess.scores_and_boxes (what export.nms=false outputs): row s*C + c is RoI s's box of
    class c with that class's score alone; padded RoIs score 0; forward's detections are among the rows."""
    from torchvision.ops import batched_nms

    from detcli.models.heads.faster_rcnn import FasterRCNNPostprocess
    from detcli.ops import box_coder

    torch.manual_seed(0)
    B, S, C = 2, 5, 3
    rois = torch.tensor([10.0, 10, 50, 60]).repeat(B, S, 1) + torch.arange(S)[None, :, None] * 15.0  # (B, S, 4)
    valid = torch.tensor([[True] * S, [True] * 3 + [False] * 2])  # (B, S)
    preds = {"rois": rois, "roi_valid": valid, "cls_logits": torch.randn(B, S, C + 1),
             "box_deltas": torch.randn(B, S, C, 4) * 0.1}
    post = FasterRCNNPostprocess(C, score_thresh=0.0, nms_thresh=0.5, max_det=S * C)
    scores, boxes = post.scores_and_boxes(preds)
    assert scores.shape == (B, S * C, C) and boxes.shape == (B, S * C, 4)
    probs = torch.softmax(preds["cls_logits"], -1)[..., :C] * valid[..., None]  # (B, S, C)
    torch.testing.assert_close(scores, torch.diag_embed(probs).flatten(1, 2))
    torch.testing.assert_close(boxes[0, 1 * C + 2], box_coder.decode(rois[0, 1], preds["box_deltas"][0, 1, 2],
                                                                       box_coder.ROI_WEIGHTS))
    assert (scores[1, 3 * C :] == 0).all()  # the padded RoIs of image 1
    dets = post(preds, torch.tensor([[200, 200]] * B))  # nothing clipped at 200 x 200
    for b in range(B):
        row_scores, row_labels = scores[b].max(1)  # (S*C,) each
        keep = batched_nms(boxes[b], row_scores, row_labels, 0.5)
        keep = keep[row_scores[keep] > 0]
        found = dets["labels"][b] >= 0
        torch.testing.assert_close(dets["scores"][b][found], row_scores[keep])
        torch.testing.assert_close(dets["boxes"][b][found], boxes[b, keep])
