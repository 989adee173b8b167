"""The `.json` sidecar written beside an exported graph, and the images its check and int8 calibration run on.

The sidecar says how to get from an image to the input and back (`preprocess`): the checkpoint's
keep-ratio resize, padding right and bottom with the model's mean (to the fixed H x W, or to a multiple of
`size_divisible` for a dynamic graph), and boxes divided by the per-axis scale then clipped to the original
image, exactly what `detcli predict` does (and what its `predict.backend=onnx` reads), and `score_thresholds`: the
per-class F1-optimal score thresholds of the checkpoint's meta (null when it has none), predict's default.

Naming: N = images, H, W = the graph's input size.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from detcli.build import instantiate_group
from detcli.data.images import ImageFiles, preprocessing
from detcli.data.transforms import image_size_of
from detcli.deploy.onnx import OUTPUT_SHAPES, OUTPUTS, export_options
from detcli.errors import DataError

log = logging.getLogger("detcli")
RESIZE_RULES = {
    "int": "keep the ratio: the longer side becomes N = image_size, the shorter floor(N * short / long)",
    "list": "keep the ratio: with image_size = [S, M], the shorter side becomes S and the longer "
            "L = floor(S * long / short); if L > M, the longer becomes M and the shorter floor(M * S / L)",
}



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

def calibration_images(data_cfg: DictConfig, meta: dict, count: int, hw: tuple[int, int],
                       pad: tuple) -> tuple[Tensor, str]:
    """The int8 calibration images: `count` dataset images as the check's, never noise."""
    try:
        return dataset_images(data_cfg, meta, count, hw, pad)
    except DataError as e:
        raise DataError(f"export.quantize=int8 calibrates on the checkpoint's training images, but found {e}: "
                        f"make its dataset readable here (the checkpoint's data.root / data.*_ann, "
                        f"which `data.root=...` on this command can point elsewhere).") from e


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
        "nms_thresh": float(getattr(model.postprocess, "nms_thresh", 0.5)),  # predict.tile merges at it
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
