"""Issue 17's onnxruntime part: every session opened with the shared options (detcli/deploy/ort.py),
and `export export.quantize=int8` on the toy checkpoint: an int8 QDQ graph beside model.onnx that onnxruntime
runs, whose detections overlap the fp32 graph's, with the mAP change in both sidecars, and that
`predict.backend=onnx` serves."""

import json

import onnx
import pytest
import torch
from conftest import detcli
from onnx import TensorProto, helper
from torchvision.ops import box_iou

from detcli.build import load_checkpoint_config
from detcli.deploy.ort import inference_session
from detcli.deploy.quantize import int8_path, quantize_int8
from detcli.deploy.sidecar import dataset_images
from detcli.errors import DetcliError


def test_sessions_get_the_shared_options(tmp_path):
    import onnxruntime as ort

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    opts = inference_session(tmp_path / "g.onnx", threads=3).get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.dynamic_block_base") == "4"
    # no thread count given: as many as torch uses, so that eager and onnxruntime run on the same cores
    default = inference_session(tmp_path / "g.onnx").get_session_options()
    assert default.intra_op_num_threads == torch.get_num_threads()


def test_int8_names_and_a_failed_quantization_names_the_head(tmp_path):
    assert int8_path(tmp_path / "model.onnx") == tmp_path / "model.int8.onnx"
    assert int8_path(tmp_path / "graph.bin") == tmp_path / "graph.bin.int8"
    (tmp_path / "model.onnx").write_text("not a graph")
    with pytest.raises(DetcliError, match="FCOSHead graph .* failed.*No int8 graph was written"):
        quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", torch.zeros(1, 3, 32, 32), "FCOSHead")
    assert not (tmp_path / "model.int8.onnx").exists()


@pytest.fixture(scope="module")
def int8_export(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    proc = detcli("export", f"checkpoint={trained_run}/checkpoints/last.pt", "export.quantize=int8",
                  "export.calibration_images=8", f"hydra.run.dir={out}")
    return out, proc


def test_int8_graph_is_quantized_and_keeps_nms_in_float(int8_export):
    out, proc = int8_export
    assert "int8 graph" in proc.stdout and "mAP" in proc.stdout
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression", "TopK"} <= ops
    weights = {i.name: i.data_type for i in graph.initializer}
    int8_weights = [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"
                    and weights.get(n.input[0]) == TensorProto.INT8]
    assert len(int8_weights) >= 20  # the backbone's, the neck's and the head's convolutions
    # the decoding feeds NMS in fp32: no node before NonMaxSuppression is a DequantizeLinear of the head's
    producers = {o: n for n in graph.node for o in n.output}
    nms = next(n for n in graph.node if n.op_type == "NonMaxSuppression")
    assert all(producers[i].op_type != "DequantizeLinear" for i in nms.input[:2])


def test_int8_detections_overlap_the_fp32_ones(int8_export, trained_run):
    out, _ = int8_export
    cfg, meta = load_checkpoint_config(str(trained_run / "checkpoints" / "last.pt"))
    sidecar = json.loads((out / "model.onnx.json").read_text())
    hw = tuple(sidecar["input"][2:])
    images, _ = dataset_images(cfg.data, meta, 4, hw, tuple(sidecar["preprocess"]["pad"]["value"]))
    feed = {"images": images.numpy()}
    ref = inference_session(out / "model.onnx").run(["boxes", "scores", "labels"], feed)
    got = inference_session(out / "model.int8.onnx").run(["boxes", "scores", "labels"], feed)
    for b in range(len(images)):  # each image's top fp32 detection is found by the int8 graph
        assert ref[1][b, 0] > 0
        same = got[2][b] == ref[2][b, 0]
        iou = box_iou(torch.from_numpy(ref[0][b, :1]), torch.from_numpy(got[0][b][same]))
        assert iou.max() > 0.5


def test_int8_sidecars_record_the_check_and_the_map_change(int8_export):
    out, _ = int8_export
    fp32, int8 = (json.loads((out / name).read_text()) for name in ("model.onnx.json", "model.int8.onnx.json"))
    block = fp32["quantize"]
    assert block == int8["quantize"] and block["graph"] == "model.int8.onnx"
    assert block["calibration"]["images"] == 8 and block["calibration"]["source"].startswith("train split")
    assert block["eval_images"] == 8  # TINY's whole val split
    assert 0 <= block["map_fp32"] <= 1 and 0 <= block["map_int8"] <= 1
    assert block["map_change"] == pytest.approx(block["map_int8"] - block["map_fp32"])
    figures = block["check"]["inputs"][0]
    assert block["check"]["enforced"] is False and figures["matched"] >= 0.5 and figures["top_iou"][0] > 0.5
    assert int8["check"] == block["check"] and int8["max_abs_box_diff"] == block["check"]["max_abs_box_diff"]
    assert fp32["max_abs_box_diff"] <= 1e-3  # the fp32 graph's own check is unchanged


def test_predict_serves_the_int8_graph(int8_export, cache_dir, tmp_path):
    out, _ = int8_export
    val = next(cache_dir.glob("toy_*_n32_128")) / "val"
    detcli("predict", "predict.backend=onnx", f"predict.onnx={out}/model.int8.onnx", f"source={val}",
           "predict.score_thresh=0.05", f"hydra.run.dir={tmp_path}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "onnx" and summary["predicted"] == 8
    assert len(json.loads((tmp_path / "predictions.json").read_text())) > 0


@pytest.mark.parametrize("override, message", [
    ("export.quantize=int4", "export.quantize must be null or int8"),
    ("export.half=true", "needs format=onnx or openvino, export.nms=true and export.half=false"),
])
def test_bad_quantize_options_name_the_key(trained_run, tmp_path, override, message):
    extra = [] if override.startswith("export.quantize") else ["export.quantize=int8"]
    proc = detcli("export", f"checkpoint={trained_run}/checkpoints/last.pt", override, *extra,
                  f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "model.int8.onnx").exists()
