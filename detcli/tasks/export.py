"""detcli export checkpoint=PATH format=onnx|torchscript: a graph from raw pixels (B, 3, H, W), then a check
of the exported model against PyTorch on sample images, whose figures go into the `.json` sidecar.

The graph ends as `export.nms` says:
- true (default): decoded, filtered detections padded to D = max_det, servable as is: boxes (B, D, 4),
  scores (B, D), labels (B, D) with -1 for padding (the real ones first), num_dets (B,);
- false: the head postprocess's decoding (`scores_and_boxes`), before any threshold or NMS: boxes (B, R, 4)
  and per-class scores (B, R, C).
The batch axis is always dynamic; `export.dynamic=true` makes H and W dynamic too (checked at two input
sizes); `export.half=true` stores fp16 weights (the backbone, neck and head run in fp16, the decoding and
NMS in fp32) for GPU runtimes: its check compares with the fp32 PyTorch model and is reported, not held to
`tolerance`, as fp16 rounding moves boxes by design.

The `.json` sidecar says how to get from an image to the input and back (`preprocess`): the checkpoint's
keep-ratio resize, padding right and bottom with the model's mean (to the fixed H x W, or to a multiple of
`size_divisible` for a dynamic graph), and boxes divided by the per-axis scale then clipped to the original
image, exactly what `detcli predict` does (and what its `predict.backend=onnx` reads), and `score_thresholds`: the
per-class F1-optimal score thresholds of the checkpoint's meta (null when it has none), predict's default.

`export.quantize=int8` also writes the graph's static int8 quantization beside it, `<name>.int8.onnx` with its
own sidecar (detcli/tasks/quantize.py: calibration on training images preprocessed as the check's, the decoding
and NMS kept in fp32, its check against PyTorch and the mAP change on the val split in both sidecars).

Naming: B = images, D = detections per image, R = decoded boxes per image, C = classes, H, W = input size.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from detcli.build import instantiate_group
from detcli.data.collate import pad_value
from detcli.data.images import ImageFiles, preprocessing
from detcli.data.transforms import image_size_of
from detcli.errors import ConfigError, DataError, DetcliError
from detcli.tasks.common import load_model, log, run_dir
from detcli.tasks.quantize import onnx_runner, quantize_export, quantize_options

RESIZE_RULES = {
    "int": "keep the ratio: the longer side becomes N = image_size, the shorter floor(N * short / long)",
    "list": "keep the ratio: with image_size = [S, M], the shorter side becomes S and the longer "
            "L = floor(S * long / short); if L > M, the longer becomes M and the shorter floor(M * S / L)",
}
OUTPUTS = {True: ["boxes", "scores", "labels", "num_dets"], False: ["boxes", "scores"]}
OUTPUT_SHAPES = {True: {"boxes": ["B", "D", 4], "scores": ["B", "D"], "labels": ["B", "D"], "num_dets": ["B"]},
                 False: {"boxes": ["B", "R", 4], "scores": ["B", "R", "C"]}}
HALF_NOTE = ("fp16 weights: the figures compare the fp16 model with the fp32 PyTorch one and are not held to "
             "`tolerance` (fp16 rounding moves boxes by design); run the graph on a GPU runtime")


class Exportable(nn.Module):
    """Detector in eval mode with tuple outputs, as export formats want them: with `nms` the detections and
    their count per image, without it the postprocess's decoding (every head's `scores_and_boxes`)."""

    def __init__(self, model: nn.Module, nms: bool = True):
        super().__init__()
        self.model, self.nms = model, nms

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.nms:
            dets = self.model(images)
            return dets["boxes"], dets["scores"], dets["labels"], (dets["labels"] >= 0).sum(1)  # ..., (B,)
        scores, boxes = self.model.postprocess.scores_and_boxes(self.model.predict(images))  # (B, R, C), (B, R, 4)
        return boxes, scores


def input_size(image_size, size_divisible: int = 32) -> tuple[int, int]:
    """(H, W) of the exported graph, a square that holds the resize of any image: int N -> N x N;
    [short, max] -> max x max; padded up to a multiple of size_divisible."""
    side = image_size if isinstance(image_size, int) else max(image_size)
    return (-(-int(side) // size_divisible) * size_divisible,) * 2


def second_size(hw: tuple[int, int], size_divisible: int) -> tuple[int, int]:
    """Another (H, W) for checking a dynamic graph: half the height (a multiple of size_divisible), same width."""
    return max(size_divisible, hw[0] // 2 // size_divisible * size_divisible), hw[1]


def export_data_config(ckpt_cfg: DictConfig, image_size) -> DictConfig:
    """The checkpoint's data config, with export's image_size (same meaning as data.image_size) if given."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(ckpt_cfg.data))
    if image_size is not None:
        data_cfg.image_size = OmegaConf.to_container(image_size) if OmegaConf.is_config(image_size) else image_size
    return data_cfg


def preprocess_spec(data_cfg: DictConfig, hw: tuple[int, int], pad: tuple, dynamic: bool) -> dict:
    """What a deployment does before and after the graph, for the `.json` sidecar."""
    size = image_size_of(data_cfg.image_size)
    steps = data_cfg.get("val_transforms")
    divisible = int(data_cfg.get("size_divisible", 32))
    return {
        "input": {"height": "dynamic" if dynamic else hw[0], "width": "dynamic" if dynamic else hw[1],
                  "channels": "RGB", "dtype": "float32", "range": "0-255, not normalised (the graph normalises)"},
        "resize": {"image_size": size if isinstance(size, int) else list(size),
                   "rule": RESIZE_RULES["int" if isinstance(size, int) else "list"],
                   "interpolation": "bilinear", "antialias": True},
        "letterbox": bool(data_cfg.get("letterbox", False)),
        "size_divisible": divisible,
        "pad": {"value": list(pad), "position": "right and bottom: the resized image at the input's top left",
                "to": f"a multiple of {divisible} on each side" if dynamic else f"{hw[0]} x {hw[1]}"},
        "scale": "per axis, resized / original size: scale_x = w' / w, scale_y = h' / h",
        "boxes_to_original": "boxes are x1, y1, x2, y2 in input pixels (rows with label -1 are padding): "
                             "divide x by scale_x and y by scale_y, then clip x to [0, w] and y to [0, h]",
        "val_transforms": OmegaConf.to_container(steps) if steps else None,  # replaces the resize when set
    }


def sample_images(data_cfg: DictConfig, meta: dict, batch: int, hw: tuple[int, int],
                  pad: tuple) -> tuple[Tensor, str]:
    """(B, 3, H, W) images of the checkpoint's dataset (its training split, else its validation split),
    preprocessed as the sidecar says, and where they come from; noise when the dataset is not here."""
    try:
        return dataset_images(data_cfg, meta, batch, hw, pad)
    except DataError as e:  # the check still runs, on noise
        log.warning("%s; using noise", e)
    return torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(0)) * 255, "noise (no dataset images)"


def dataset_images(data_cfg: DictConfig, meta: dict, count: int, hw: tuple[int, int],
                   pad: tuple) -> tuple[Tensor, str]:
    """(N, 3, H, W) images of the checkpoint's dataset (the first `count` of its training split, repeated if it
    has fewer, else of its validation split), preprocessed as the sidecar says, and where they come from.
    Raises a DataError naming both splits' failures when neither can be read."""
    errors = []
    for split in ("train", "val"):
        try:
            records, root, _ = instantiate_group("data", data_cfg).load_split(split, meta["cat_ids"])
            files = [Path(root) / records[i % len(records)].file_name for i in range(count)]
            transforms, collate = preprocessing(data_cfg, pad)
            collate.canvas = hw
            images = collate([ImageFiles(files, transforms)[i] for i in range(count)])["images"]
            names = list(dict.fromkeys(f.name for f in files))
            names = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            return images[..., : hw[0], : hw[1]].float(), f"{split} split: {names}"  # a val_transforms may go past
        except Exception as e:  # noqa: BLE001 - tried on the other split, then reported as one error
            errors.append(f"{split}: {e}")
    raise DataError(f"no images of the checkpoint's dataset ({'; '.join(errors)})")


def largest_box_difference(ref: tuple, got: tuple) -> float:
    """Largest |box difference| (px) between matching detections (same label, nearest box) of two runs."""
    worst = 0.0
    for rb, rs, rl, gb, gs, gl in zip(*ref[:3], *got[:3]):
        for box, label in zip(rb[rs > 0], rl[rs > 0]):
            same = gb[(gl == label) & (gs > 0)]
            if len(same) == 0:
                return float("inf")
            worst = max(worst, float((same - box).abs().amax(1).min()))
    return worst


def compare(ref: tuple, got: tuple, nms: bool) -> dict:
    """The figures of one check: the largest box difference (px) and, without NMS, the largest score one."""
    if nms:
        return {"max_abs_box_diff": largest_box_difference(ref, got),
                "num_dets": [int(n) for n in got[3]], "num_dets_pytorch": [int(n) for n in ref[3]]}
    return decoded_difference(ref, got)


def decoded_difference(ref: tuple, got: tuple, top: int = 1000) -> dict:
    """Largest box and score differences between the decodings (boxes (B, R, 4), scores (B, R, C)) of two runs,
    over the `top` best rows of the reference, each paired with the nearest row (box and scores) of the other:
    the row order of a two-stage head follows its sorted proposals, which near-ties may swap; and eager
    Faster R-CNN drops the RoI columns no image fills, which a graph keeps."""
    box_diff = score_diff = 0.0
    for rb, rs, gb, gs in zip(ref[0], ref[1], got[0].float(), got[1].float()):
        idx = rs.amax(1).topk(min(top, len(rs))).indices  # (k,)
        near = torch.cdist(torch.cat([rb[idx], rs[idx]], 1), torch.cat([gb, gs], 1), p=float("inf")).argmin(1)  # (k,)
        box_diff = max(box_diff, float((rb[idx] - gb[near]).abs().max()))
        score_diff = max(score_diff, float((rs[idx] - gs[near]).abs().max()))
    return {"max_abs_box_diff": box_diff, "max_abs_score_diff": score_diff}


def check(reference: nn.Module, run_exported, inputs: list[Tensor], nms: bool) -> list[dict]:
    """The exported model against PyTorch on each input: one figures dict per input size."""
    figures = []
    for images in inputs:
        with torch.no_grad():
            ref = reference(images)
        figures.append({"input": list(images.shape), **compare(ref, run_exported(images), nms)})
    return figures


def export_options(cfg: DictConfig) -> tuple[bool, bool, bool]:
    """(nms, dynamic, half) of `export.*`, checked."""
    options = cfg.get("export") or {}
    values = []
    for key in ("nms", "dynamic", "half"):
        value = options.get(key, key == "nms")
        if not isinstance(value, bool):
            raise ConfigError(f"export.{key} must be true or false, got '{value}'.")
        values.append(value)
    return tuple(values)


def run(cfg: DictConfig) -> float:
    out = run_dir()
    if cfg.format not in ("onnx", "torchscript"):
        raise ConfigError(f"format must be onnx or torchscript, got '{cfg.format}'.")
    nms, dynamic, half = export_options(cfg)
    quantize = quantize_options(cfg)
    model, ckpt_cfg, meta, _ = load_model(cfg.checkpoint, "cpu", cfg.get("postprocess"))
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
    suffix = "onnx" if cfg.format == "onnx" else "torchscript.pt"
    path = Path(cfg.output or out / f"model.{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        run_exported = export_onnx(exported, sample, path, int(cfg.opset), OUTPUTS[nms], dynamic)
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


def calibration_images(data_cfg: DictConfig, meta: dict, count: int, hw: tuple[int, int],
                       pad: tuple) -> tuple[Tensor, str]:
    """The int8 calibration images: `count` dataset images as the check's, never noise."""
    try:
        return dataset_images(data_cfg, meta, count, hw, pad)
    except DataError as e:
        raise DataError(f"export.quantize=int8 calibrates on the checkpoint's training images, but found {e}: "
                        f"make its dataset readable here (the checkpoint's data.root / data.*_ann, "
                        f"which `data.root=...` on this command can point elsewhere).") from e


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


def write_sidecar(path: Path, cfg: DictConfig, meta: dict, model: nn.Module, data_cfg: DictConfig,
                  hw: tuple[int, int], pad: tuple, figures: dict, quantized: dict | None = None) -> None:
    """`<model>.json` beside the model: classes, inputs and outputs, preprocessing and the check's figures;
    with an int8 graph (`quantized`: its block) the block in it too, and `<model>.int8.onnx.json` beside that
    graph: the same, with the int8 graph's check as its figures."""
    nms, dynamic, half = export_options(cfg)
    sidecar = {
        "format": cfg.format, "input": ["B", 3, "H", "W"] if dynamic else ["B", 3, *hw],
        "class_names": meta["class_names"], "cat_ids": meta["cat_ids"], "outputs": OUTPUTS[nms],
        "output_shapes": OUTPUT_SHAPES[nms], "nms": nms, "dynamic": dynamic, "half": half,
        # the postprocess baked into a graph with NMS: a consumer can raise them, not lower them
        "score_thresh": float(model.postprocess.score_thresh), "max_det": int(model.postprocess.max_det),
        # the F1-optimal score per class training found on val (null: none for that class), what predict applies
        "score_thresholds": meta.get("score_thresholds"),
        "max_abs_box_diff": figures["max_abs_box_diff"], "check": figures,
        "preprocess": preprocess_spec(data_cfg, hw, pad, dynamic),
    }
    if quantized:
        sidecar["quantize"] = quantized
        int8 = {**sidecar, "weights": "int8", "max_abs_box_diff": quantized["check"]["max_abs_box_diff"],
                "check": quantized["check"]}
        (path.parent / f"{quantized['graph']}.json").write_text(json.dumps(json_safe(int8), indent=2) + "\n")
    (path.parent / f"{path.name}.json").write_text(json.dumps(json_safe(sidecar), indent=2) + "\n")


def json_safe(value):
    """`value` with non-finite floats (a detection with no counterpart: an infinite difference) as strings,
    so that the sidecar stays strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def export_onnx(wrapper: nn.Module, sample: Tensor, path: Path, opset: int, names: list[str] = OUTPUTS[True],
                dynamic: bool = False):
    """Writes the ONNX graph; returns a function running it in onnxruntime (CPU) as a tuple of tensors."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    # D = max_det is fixed; R (without NMS) follows the input size
    out_axes = {0: "batch", 1: "boxes"} if dynamic and "num_dets" not in names else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: torchvision's NMS has an ONNX symbolic there, and the batch
        # (and with export.dynamic the H, W) axes stay dynamic through the data-dependent NMS
        torch.onnx.export(
            wrapper, (sample,), str(path), input_names=["images"], output_names=names, opset_version=opset,
            dynamic_axes={"images": axes, **{n: out_axes for n in names}}, dynamo=False,
        )
    return onnx_runner(path)


def export_torchscript(wrapper: nn.Module, sample: Tensor, path: Path):
    """Writes the traced module; returns a function running the saved file."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(wrapper, sample, check_trace=False).save(str(path))
    loaded = torch.jit.load(str(path))

    def run_exported(images: Tensor) -> tuple:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return tuple(loaded(images))

    return run_exported
