"""detcli export checkpoint=PATH|weights=... format=onnx|openvino|torchscript: a graph from raw pixels (B, 3, H, W), then a
check of the exported model against PyTorch on sample images, whose figures go into the `.json` sidecar.
format=openvino writes OpenVINO IR (model.xml + model.bin) converted from the ONNX graph (detcli/deploy/openvino.py).

The graph ends as `export.nms` says (detcli/deploy/onnx.py). The batch axis is always dynamic; `export.dynamic=true` makes H and W dynamic too (checked at two input
sizes); `export.half=true` stores fp16 weights (the backbone, neck and head run in fp16, the decoding and
NMS in fp32) for GPU runtimes: its check compares with the fp32 PyTorch model and is reported, not held to
`tolerance`, as fp16 rounding moves boxes by design.

The `.json` sidecar (detcli/deploy/sidecar.py) says how to get from an image to the input and back.

`export.quantize=int8` also writes the graph's static int8 quantization beside it, `<name>.int8.onnx` (openvino:
`<name>.int8.xml`, NNCF's) with its own sidecar (detcli/deploy/quantize.py: calibration on training images preprocessed as the check's, the decoding
and NMS kept in fp32, its check against PyTorch and the mAP change on the val split in both sidecars).

Naming: B = images, D = detections per image, R = decoded boxes per image, C = classes, H, W = input size.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch.nn.functional as F
from omegaconf import DictConfig

from detcli.build import load_model, model_source
from detcli.data.collate import pad_value
from detcli.data.transforms import image_size_of
from detcli.deploy.onnx import (
    OUTPUTS,
    Exportable,
    check,
    export_onnx,
    export_options,
    export_torchscript,
    input_size,
    second_size,
)
from detcli.deploy.openvino import export_openvino, xml_path
from detcli.deploy.quantize import quantize_export, quantize_options
from detcli.deploy.sidecar import calibration_images, export_data_config, sample_images, write_sidecar
from detcli.errors import ConfigError, DetcliError
from detcli.tasks.common import run_dir

SUFFIXES = {"onnx": "onnx", "openvino": "xml", "torchscript": "torchscript.pt"}  # format -> the model file's suffix
HALF_NOTE = ("fp16 weights: the figures compare the fp16 model with the fp32 PyTorch one and are not held to "
             "`tolerance` (fp16 rounding moves boxes by design); run the graph on a GPU runtime")


def run(cfg: DictConfig) -> float:
    out = run_dir()
    if cfg.format not in SUFFIXES:
        raise ConfigError(f"format must be one of {', '.join(SUFFIXES)}, got '{cfg.format}'.")
    nms, dynamic, half = export_options(cfg)
    quantize = quantize_options(cfg)
    source, key = model_source(cfg, "export")
    model, ckpt_cfg, meta, _ = load_model(source, "cpu", cfg.get("postprocess"), key)
    reference = Exportable(model, nms).eval()
    exported = Exportable(copy.deepcopy(model).half(), nms).eval() if half else reference
    data_cfg = export_data_config(ckpt_cfg, cfg.image_size)
    divisible = int(data_cfg.get("size_divisible", 32))
    hw = input_size(image_size_of(data_cfg.image_size), divisible)
    pad = pad_value(model.pixel_mean)
    sample, source = sample_images(data_cfg, meta, int(cfg.batch_size), hw, pad)
    inputs = [sample]
    if dynamic:  # the same images at a second, non-square size
        inputs.append(F.interpolate(sample, size=second_size(hw, divisible), mode="bilinear", antialias=True).round())
    path = Path(cfg.output or out / f"model.{SUFFIXES[cfg.format]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        run_exported = export_onnx(exported, sample, path, int(cfg.opset), OUTPUTS[nms], dynamic)
    elif cfg.format == "openvino":
        path = xml_path(path)
        run_exported = export_openvino(exported, sample, path, int(cfg.opset), OUTPUTS[nms], dynamic)
    else:
        run_exported = export_torchscript(exported, sample, path)
    figures = check(reference, run_exported, inputs, nms)
    diff = max(f["max_abs_box_diff"] for f in figures)
    passed = half or diff <= float(cfg.tolerance)
    quantized = None
    if quantize and passed:
        calibration = calibration_images(data_cfg, meta, quantize["calibration_images"], hw, pad)
        quantized = quantize_export(path, quantize, model, reference, inputs, calibration,
                                    (data_cfg, meta, hw, pad))
    write_sidecar(path, cfg, meta, model, data_cfg, hw, pad, {
        "images": source, "against": "the fp32 PyTorch model", "inputs": figures, "max_abs_box_diff": diff,
        "tolerance": float(cfg.tolerance), "enforced": not half, **({"note": HALF_NOTE} if half else {}),
    }, quantized)
    size = "H x W dynamic" if dynamic else f"{hw[0]} x {hw[1]}"
    print(f"exported {cfg.format} model to {path} (input B x 3 x {size}, 0-255 RGB; outputs "
          f"{', '.join(OUTPUTS[nms])}{'; fp16 weights' if half else ''}; preprocessing in {path.name}.json)")
    print(f"largest |box difference| against PyTorch: {diff:.2e} px (tolerance {cfg.tolerance}"
          f"{', not enforced: fp16 weights' if half else ''}) on {len(inputs)} input size(s) of {source}")
    if not passed:
        raise DetcliError(f"the exported model at '{path}' differs from PyTorch by {diff:.3g} px, more than "
                          f"tolerance={cfg.tolerance} (figures in '{path}.json').")
    if quantized:
        print_quantized(path, quantized)
    return diff


def print_quantized(path: Path, block: dict) -> None:
    """The int8 graph's line: where it is, its check and its mAP change."""
    check_ = block["check"]
    matched = [f["matched"] for f in check_["inputs"] if f["matched"] is not None]
    found = (f"{min(matched):.0%} of PyTorch's detections found again (IoU >= {check_['inputs'][0]['match_iou']})"
             if matched else "PyTorch detected nothing on the check images to compare with")
    line = (f"int8 graph {path.parent / block['graph']}: {found}, largest |box difference| "
            f"{check_['max_abs_box_diff']:.3g} px")
    if "map_change" in block:
        line += (f"; mAP {block['map_fp32']:.4f} (fp32 graph) -> {block['map_int8']:.4f} (int8), "
                 f"{block['map_change']:+.4f} on {block['eval_images']} val image(s)")
    print(line)
