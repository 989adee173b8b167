"""Issue 30's OpenVINO part: every model compiled with the shared options (detcli/deploy/openvino.py), and
`export format=openvino export.quantize=int8` on the toy checkpoint: an int8 IR (NNCF) beside model.xml whose
quantization stops before the decoding, with its check and the mAP change in both sidecars, that
`predict.backend=openvino` serves; clear errors for a missing path, a graph of another format and a missing
install. (The fp32 IR against PyTorch through predict, for every head: tests/cli/test_predict_export.py.)"""

import json
import sys

import pytest
import torch
from conftest import detcli

from detcli.deploy import openvino as ov
from detcli.errors import ConfigError, DetcliError


def test_compiled_models_get_the_shared_options(tmp_path, monkeypatch):
    import openvino

    monkeypatch.delenv("DETCLI_CPU_BF16", raising=False)
    param = openvino.opset13.parameter([1, 3], openvino.Type.f32, name="images")
    model = openvino.Model([openvino.opset13.relu(param)], [param], "relu")
    compiled = ov.compile_model(model, "fp32", threads=1)
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert "LATENCY" in str(compiled.get_property("PERFORMANCE_HINT"))
    run = ov.runner(ov.compile_model(model))  # as many threads as torch uses
    out = run(torch.tensor([[-1.0, 0.5, 2.0]]))
    assert len(out) == 1 and torch.equal(out[0], torch.tensor([[0.0, 0.5, 2.0]]))
    assert ov.xml_path(tmp_path / "model.xml") == tmp_path / "model.xml"
    assert ov.xml_path(tmp_path / "det") == tmp_path / "det.xml"
    assert ov.int8_xml(tmp_path / "model.xml") == tmp_path / "model.int8.xml"


def test_a_missing_install_and_a_failed_quantization_say_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "model.xml").write_text("not an IR")
    with pytest.raises(DetcliError, match="FCOSHead IR .* failed.*No int8 model was written"):
        ov.quantize_openvino(tmp_path / "model.xml", tmp_path / "model.int8.xml", torch.zeros(1, 3, 32, 32), "FCOSHead")
    assert not (tmp_path / "model.int8.xml").exists()
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'detcli\[openvino\]'"):
        ov.openvino()


@pytest.fixture(scope="module")
def int8_ir(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino")
    proc = detcli("export", f"checkpoint={trained_run}/checkpoints/last.pt", "format=openvino",
                  "export.quantize=int8", "export.calibration_images=8", f"hydra.run.dir={out}")
    return out, proc


def test_int8_ir_quantizes_the_network_and_not_the_decoding(int8_ir):
    out, proc = int8_ir
    assert "exported openvino model" in proc.stdout and "int8 graph" in proc.stdout and "mAP" in proc.stdout
    assert {p.name for p in out.glob("model*")} >= {"model.xml", "model.bin", "model.xml.json", "model.int8.xml",
                                                     "model.int8.bin", "model.int8.xml.json"}
    quantized = ov.quantized_ops(out / "model.int8.xml")
    assert sum("/model/backbone/" in n for n in quantized) >= 10 and any("/model/head/" in n for n in quantized)
    assert not [n for n in quantized if "postprocess" in n]  # the decoding, top-k and NMS stay in fp32
    assert ov.quantized_ops(out / "model.xml") == []


def test_int8_sidecars_record_the_check_and_the_map_change(int8_ir):
    out, _ = int8_ir
    fp32, int8 = (json.loads((out / name).read_text()) for name in ("model.xml.json", "model.int8.xml.json"))
    assert fp32["format"] == int8["format"] == "openvino" and fp32["max_abs_box_diff"] <= 1e-3
    block = fp32["quantize"]
    assert block == int8["quantize"] and block["graph"] == "model.int8.xml" and "NNCF" in block["format"]
    assert block["calibration"]["images"] == 8 and block["eval_images"] == 8
    assert block["map_change"] == pytest.approx(block["map_int8"] - block["map_fp32"])
    assert block["check"]["enforced"] is False and block["check"]["inputs"][0]["matched"] >= 0.5


def test_predict_serves_the_int8_ir_and_names_what_is_wrong(int8_ir, cache_dir, tmp_path):
    out, _ = int8_ir
    val = next(cache_dir.glob("toy_*_n32_128")) / "val"
    detcli("predict", "predict.backend=openvino", f"predict.openvino={out}/model.int8.xml", f"source={val}",
           "predict.score_thresh=0.05", f"hydra.run.dir={tmp_path}/a")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["backend"] == "openvino" and summary["predicted"] == 8
    proc = detcli("predict", "predict.backend=openvino", f"source={val}", f"hydra.run.dir={tmp_path}/b", check=False)
    assert proc.returncode == 2 and "predict.openvino=PATH" in proc.stderr and "format=openvino" in proc.stderr
    onnx_dir = tmp_path / "onnx"  # an ONNX graph's sidecar under an .xml name: refused, not misread
    onnx_dir.mkdir()
    sidecar = json.loads((out / "model.xml.json").read_text())
    (onnx_dir / "model.xml").write_text("")
    (onnx_dir / "model.xml.json").write_text(json.dumps({**sidecar, "format": "onnx"}))
    proc = detcli("predict", "predict.backend=openvino", f"predict.openvino={onnx_dir}/model.xml", f"source={val}",
                  f"hydra.run.dir={tmp_path}/c", check=False)
    assert proc.returncode == 2 and "is not an openvino graph" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
