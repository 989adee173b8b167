"""A detector as an exported graph (ONNX or TorchScript) from raw pixels (B, 3, H, W), and the self-check of
that graph against PyTorch: `Exportable` gives the graph its tuple outputs, `export_onnx` /
`export_torchscript` write it and return a runner, `check` compares the runner with PyTorch per input size.

The graph ends as `export.nms` says:
- true (default): decoded, filtered detections padded to D = max_det, servable as is: boxes (B, D, 4),
  scores (B, D), labels (B, D) with -1 for padding (the real ones first), num_dets (B,);
- false: the head postprocess's decoding (`scores_and_boxes`), before any threshold or NMS: boxes (B, R, 4)
  and per-class scores (B, R, C).

Naming: B = images, D = detections per image, R = decoded boxes per image, C = classes, H, W = input size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from detcli.deploy.ort import inference_session
from detcli.errors import ConfigError

OUTPUTS = {True: ["boxes", "scores", "labels", "num_dets"], False: ["boxes", "scores"]}
OUTPUT_SHAPES = {True: {"boxes": ["B", "D", 4], "scores": ["B", "D"], "labels": ["B", "D"], "num_dets": ["B"]},
                 False: {"boxes": ["B", "R", 4], "scores": ["B", "R", "C"]}}


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


def export_onnx(wrapper: nn.Module, sample: Tensor, path: Path, opset: int, names: list[str] = OUTPUTS[True],
                dynamic: bool = False):
    """Writes the ONNX graph; returns a function running it in onnxruntime (CPU) as a tuple of tensors."""
    write_onnx(wrapper, sample, path, opset, names, dynamic)
    return onnx_runner(path)


def write_onnx(wrapper: nn.Module, sample: Tensor, path: Path, opset: int, names: list[str] = OUTPUTS[True],
               dynamic: bool = False) -> None:
    """Writes the ONNX graph of `wrapper` traced on `sample` (the batch axis dynamic; H and W too with `dynamic`)."""
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


def onnx_runner(path: Path):
    """A function running the graph at `path` in onnxruntime on the CPU, outputs as a tuple of tensors."""
    session = inference_session(path)
    return lambda images: tuple(torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()}))
