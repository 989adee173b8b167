"""`detcli export format=onnx export.quantize=int8`: static int8 quantization of the exported graph with
onnxruntime.quantization, written beside it as `<name>.int8.onnx` with its own `.json` sidecar
(`format=openvino`: NNCF's, `<name>.int8.xml`, detcli/deploy/openvino.py; the check and the evaluation below
are the same).

- calibration: `export.calibration_images` images of the checkpoint's training split, preprocessed exactly
  as export's self-check preprocesses them (the sidecar's resize and padding), MinMax ranges;
- format: QDQ (QuantizeLinear / DequantizeLinear pairs that onnxruntime folds into QLinearConv,
  QLinearMatMul...), int8 weights per output channel, uint8 activations (the u8 x s8 kernels of x86);
- what is quantized: the network, every node of the backbone and the neck, and the convolutions and
  matrix products (with their ReLUs) of the head. The rest stays fp32: the input normalisation, the head's
  normalisation layers and, above all, the decoding, the score threshold, the top-k and the NMS (and a
  two-stage head's proposal decoding and RoIAlign), whose box arithmetic 8 bits cannot hold;
- check: the int8 graph against the fp32 PyTorch model on export's sample images (reported, not held to
  `tolerance`: int8 moves boxes by design): the largest box difference, the share of PyTorch's
  detections that the int8 graph finds again (same label, IoU >= 0.5) and the IoU of each image's top one;
- `export.quantize_eval`: COCO mAP of the fp32 and the int8 graphs (both in the format's runtime) on the first
  `export.eval_images` images of the val split: `map_fp32`, `map_int8`, `map_change`.

Naming: B = images, D = detections per image, N = calibration images, H, W = the graph's input size.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchvision.ops import box_iou

from detcli.build import instantiate_group
from detcli.deploy import openvino as ov
from detcli.deploy.onnx import check, onnx_runner
from detcli.errors import ConfigError, DetcliError
from detcli.evaluation.evaluator import score, to_original

log = logging.getLogger("detcli")
NETWORK = ("/model/backbone/", "/model/neck/")  # every node of these module scopes is quantized
HEAD = "/model/head/"
HEAD_OPS = ("Conv", "MatMul", "Gemm", "Relu")  # the head's nodes that are: its convolutions and linear layers
MATCH_IOU = 0.5


def int8_path(path: Path) -> Path:
    """Where the int8 graph of `path` goes: model.onnx -> model.int8.onnx; a name without .onnx gets .int8."""
    return path.with_suffix(".int8.onnx") if path.suffix == ".onnx" else path.with_name(path.name + ".int8")


def quantize_options(cfg: DictConfig) -> dict | None:
    """export.quantize and its companions, checked; None without quantization."""
    options = cfg.get("export") or {}
    mode = options.get("quantize")
    if mode is None:
        return None
    if mode != "int8":
        raise ConfigError(f"export.quantize must be null or int8, got '{mode}'.")
    if cfg.format not in FORMATS or options.get("half") or not options.get("nms", True):
        raise ConfigError("export.quantize=int8 quantizes an ONNX or OpenVINO graph with NMS and fp32 weights: it "
                          f"needs format=onnx or openvino, export.nms=true and export.half=false (got format={cfg.format}, "
                          f"export.nms={options.get('nms', True)}, export.half={options.get('half', False)}).")
    counts = {}
    for key, default in (("calibration_images", 32), ("eval_images", 100)):
        value = options.get(key, default)
        if key == "eval_images" and value is None:
            counts[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"export.{key} must be a positive integer, got '{value}'.")
        counts[key] = value
    evaluate = options.get("quantize_eval", True)
    if not isinstance(evaluate, bool):
        raise ConfigError(f"export.quantize_eval must be true or false, got '{evaluate}'.")
    return {**counts, "evaluate": evaluate, "format": cfg.format}


def quantized_nodes(model) -> list[str]:
    """Names of the nodes of an ONNX model to quantize (module docstring: the network, not the decoding)."""
    return [n.name for n in model.graph.node
            if n.name.startswith(NETWORK) or (n.name.startswith(HEAD) and n.op_type in HEAD_OPS)]


class ImageBatches:
    """onnxruntime's CalibrationDataReader over (N, 3, H, W) images, `batch` at a time."""

    def __init__(self, images: Tensor, batch: int):
        self.batches = iter(images.split(batch))

    def get_next(self) -> dict | None:
        images = next(self.batches, None)
        return None if images is None else {"images": np.ascontiguousarray(images.float().numpy())}


def quantize_int8(fp32: Path, out: Path, calibration: Tensor, head: str, batch: int = 8) -> None:
    """Writes the int8 QDQ graph of the ONNX graph `fp32` to `out`, calibrated on (N, 3, H, W) images.
    Raises a DetcliError naming the head (and the op, when onnxruntime names one) if quantization fails."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every bias it copies to the root logger
    with tempfile.TemporaryDirectory(prefix="detcli_int8_") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            # shapes on every tensor and the shared head's weights folded into initializers (Identity nodes
            # otherwise hide them from the quantizer); symbolic shapes are skipped: NMS outputs have none
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            model = onnx.load(str(prepared))
            keep = set(quantized_nodes(model))
            quantize_static(
                str(prepared), str(out), ImageBatches(calibration, batch), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=[n.name for n in model.graph.node if n.name not in keep],
            )
        except Exception as e:  # any quantizer failure: one clear message
            out.unlink(missing_ok=True)
            op = re.search(r"\b(?:op(?:_type)?|node)\W+(\w+)", str(e))
            raise DetcliError(f"int8 quantization of the {head} graph '{fp32}' failed"
                              f"{f' at {op.group(1)}' if op else ''}: {e}. No int8 graph was written; "
                              f"export without export.quantize.") from e
        finally:
            logging.getLogger().setLevel(quiet)


def agreement(ref: tuple, got: tuple) -> dict:
    """How far the int8 graph's detections (boxes (B, D, 4), scores (B, D), labels (B, D)) find PyTorch's:
    the share of PyTorch's detections with a same-label int8 one at IoU >= MATCH_IOU, and per image the
    best IoU of PyTorch's top detection with a same-label int8 one (null: PyTorch found nothing)."""
    found = total = 0
    top_iou = []
    for rb, rs, rl, gb, gs, gl in zip(*ref[:3], *got[:3]):
        rb, rl = rb[rs > 0], rl[rs > 0]  # (d, 4), (d,): PyTorch's real detections, best first
        same = rl[:, None] == gl[None][:, gs > 0]  # (d, d')
        iou = box_iou(rb.float(), gb[gs > 0].float()) * same  # (d, d')
        best = iou.amax(1) if iou.numel() else torch.zeros(len(rb))  # (d,)
        found, total = found + int((best >= MATCH_IOU).sum()), total + len(rb)
        top_iou.append(round(float(best[0]), 4) if len(rb) else None)
    return {"matched": found / total if total else None, "match_iou": MATCH_IOU, "top_iou": top_iou}


def val_maps(graphs: list, data_cfg: DictConfig, meta: dict, hw: tuple[int, int], pad: tuple,
             count: int | None) -> tuple[list[float], int]:
    """COCO mAP (IoU 0.50:0.95) of each graph (a runner: images -> boxes, scores, labels, ...) on the first
    `count` (None: all) images of the val split,
    preprocessed as predict does for a fixed-size graph, and the number of images."""
    data_cfg = OmegaConf.merge(data_cfg, {"num_workers": 0})  # a few images: no worker processes
    data = instantiate_group("data", data_cfg)
    dataset = data.dataset("val", meta["cat_ids"], meta.get("class_names"))
    collate = data.val_loader(dataset, pad_value=pad).collate_fn  # padded as predict pads for this graph
    collate.canvas = hw
    count, size = min(count or len(dataset), len(dataset)), int(data_cfg.get("val_batch_size") or 8)
    batches = (collate([dataset[i] for i in range(s, min(s + size, count))]) for s in range(0, count, size))
    dets, gts = [[] for _ in graphs], []
    for batch in batches:
        images = batch["images"][..., : hw[0], : hw[1]].float().contiguous()  # (B, 3, H, W)
        for i, run in enumerate(graphs):
            boxes, scores, labels = run(images)[:3]
            dets[i] += to_original({"boxes": boxes, "scores": scores, "labels": labels}, batch)
        gts += [m["gt"] for m in batch["meta"]]
    return [score(d, gts, list(meta["class_names"])).stats["map"] for d in dets], len(gts)


def quantize_export(path: Path, options: dict, model: nn.Module, reference: nn.Module, inputs: list[Tensor],
                    calibration: tuple[Tensor, str], eval_args: tuple) -> dict:
    """The int8 graph of the fp32 graph at `path`, checked against PyTorch (and evaluated with
    `options["evaluate"]`); returns the sidecars' `quantize` block."""
    fmt = FORMATS[options.get("format", "onnx")]
    out = fmt["int8"](path)
    images, source = calibration
    fmt["quantize"](path, out, images, type(model.head).__name__)
    try:
        run_int8 = fmt["runner"](out)
        figures = []
        for f, x in zip(check(reference, run_int8, inputs, nms=True), inputs):
            with torch.no_grad():
                figures.append({**f, **agreement(reference(x), run_int8(x))})
    except Exception as e:  # a graph onnxruntime cannot run: not left behind
        out.unlink(missing_ok=True)
        raise DetcliError(f"the int8 graph of the {type(model.head).__name__} head does not run in {fmt['runtime']} "
                          f"({e}); no int8 graph was written, export without export.quantize.") from e
    block = {"graph": out.name, "format": fmt["description"], "kept_fp32": fmt["kept_fp32"],
             "calibration": {"images": len(images), "source": source, "method": fmt["calibration"]},
             "check": {"against": "the fp32 PyTorch model", "enforced": False, "inputs": figures,
                       "max_abs_box_diff": max(f["max_abs_box_diff"] for f in figures)}}
    if options["evaluate"]:
        (fp32_map, int8_map), count = val_maps([fmt["runner"](path), run_int8], *eval_args, options["eval_images"])
        block.update(map_fp32=fp32_map, map_int8=int8_map, map_change=int8_map - fp32_map, eval_images=count)
    return block


# what int8 quantization is in each export format: where the graph goes, the quantizer, the runner of the check
FORMATS = {
    "onnx": {"int8": int8_path, "quantize": quantize_int8, "runner": onnx_runner, "runtime": "onnxruntime",
             "description": "QDQ: int8 weights per output channel, uint8 activations", "calibration": "MinMax",
             "kept_fp32": "input normalisation, head normalisation layers, decoding, threshold, top-k, NMS"},
    "openvino": {"int8": ov.int8_xml, "quantize": ov.quantize_openvino, "runner": ov.openvino_runner,
                 "runtime": "OpenVINO", "description": "NNCF post-training quantization (FakeQuantize), default preset",
                 "calibration": "NNCF statistics + fast bias correction",
                 "kept_fp32": "input scaling where NNCF leaves it, decoding, threshold, top-k, NMS"},
}
