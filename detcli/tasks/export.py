"""detcli export checkpoint=PATH format=onnx|torchscript: a graph from raw pixels (B, 3, H, W) to
decoded detections (boxes (B, D, 4), scores (B, D), labels (B, D), NMS included, dynamic batch),
then a check of the exported model against PyTorch on a sample.

The graph's input has a fixed H x W; the `.json` sidecar says how to get there from an image and back
(`preprocess`): the checkpoint's keep-ratio resize, padding right and bottom with the model's mean, and
boxes divided by the per-axis scale then clipped to the original image, exactly what `detcli predict`
does.

Naming: B = images, D = detections per image, H, W = the graph's input size.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from detcli.build import instantiate_group
from detcli.data.collate import Collate, pad_value
from detcli.data.transforms import image_size_of
from detcli.errors import ConfigError, DetcliError
from detcli.tasks.common import load_model, log, run_dir

RESIZE_RULES = {
    "int": "keep the ratio: the longer side becomes N = image_size, the shorter floor(N * short / long)",
    "list": "keep the ratio: with image_size = [S, M], the shorter side becomes S and the longer "
            "L = floor(S * long / short); if L > M, the longer becomes M and the shorter floor(M * S / L)",
}


class Exportable(nn.Module):
    """Detector in eval mode with tuple outputs, as export formats want them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dets = self.model(images)
        return dets["boxes"], dets["scores"], dets["labels"]


def input_size(image_size, size_divisible: int = 32) -> tuple[int, int]:
    """(H, W) of the exported graph, a square that holds the resize of any image: int N -> N x N;
    [short, max] -> max x max; padded up to a multiple of size_divisible."""
    side = image_size if isinstance(image_size, int) else max(image_size)
    return (-(-int(side) // size_divisible) * size_divisible,) * 2


def export_data_config(ckpt_cfg: DictConfig, image_size) -> DictConfig:
    """The checkpoint's data config, with export's image_size (same meaning as data.image_size) if given."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(ckpt_cfg.data))
    if image_size is not None:
        data_cfg.image_size = OmegaConf.to_container(image_size) if OmegaConf.is_config(image_size) else image_size
    return data_cfg


def preprocess_spec(data_cfg: DictConfig, hw: tuple[int, int], pad: tuple) -> dict:
    """What a deployment does before and after the graph, for the `.json` sidecar."""
    size = image_size_of(data_cfg.image_size)
    steps = data_cfg.get("val_transforms")
    return {
        "input": {"height": hw[0], "width": hw[1], "channels": "RGB", "dtype": "float32",
                  "range": "0-255, not normalised (the graph normalises)"},
        "resize": {"image_size": size if isinstance(size, int) else list(size),
                   "rule": RESIZE_RULES["int" if isinstance(size, int) else "list"],
                   "interpolation": "bilinear", "antialias": True},
        "letterbox": bool(data_cfg.get("letterbox", False)),
        "pad": {"value": list(pad), "position": "right and bottom: the resized image at the input's top left"},
        "scale": "per axis, resized / original size: scale_x = w' / w, scale_y = h' / h",
        "boxes_to_original": "boxes are x1, y1, x2, y2 in input pixels (rows with label -1 are padding): "
                             "divide x by scale_x and y by scale_y, then clip x to [0, w] and y to [0, h]",
        "val_transforms": OmegaConf.to_container(steps) if steps else None,  # replaces the resize when set
    }


def sample_images(data_cfg: DictConfig, meta: dict, batch: int, hw: tuple[int, int], pad: tuple) -> Tensor:
    """(B, 3, H, W) validation images of the checkpoint's dataset, preprocessed as the sidecar says, or
    noise when the dataset is not here."""
    try:
        dataset = instantiate_group("data", data_cfg).dataset("val", meta["cat_ids"])
        samples = [dataset[i % len(dataset)] for i in range(batch)]
        images = Collate(int(data_cfg.get("size_divisible", 32)), pad, canvas=hw)(samples)["images"]
        return images[..., : hw[0], : hw[1]].float()  # (B, 3, H, W); a val_transforms may resize past it
    except Exception as e:  # noqa: BLE001 - the check still runs, on noise
        log.warning("no validation images for the export check (%s); using noise", e)
        return torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(0)) * 255


def largest_box_difference(ref: tuple, got: tuple) -> float:
    """Largest |box difference| (px) between matching detections (same label, nearest box) of two runs."""
    worst = 0.0
    for rb, rs, rl, gb, gs, gl in zip(*ref, *got):
        for box, label in zip(rb[rs > 0], rl[rs > 0]):
            same = gb[(gl == label) & (gs > 0)]
            if len(same) == 0:
                return float("inf")
            worst = max(worst, float((same - box).abs().amax(1).min()))
    return worst


def run(cfg: DictConfig) -> float:
    out = run_dir()
    model, ckpt_cfg, meta, _ = load_model(cfg.checkpoint, "cpu")
    wrapper = Exportable(model).eval()
    data_cfg = export_data_config(ckpt_cfg, cfg.image_size)
    hw = input_size(image_size_of(data_cfg.image_size), int(data_cfg.get("size_divisible", 32)))
    pad = pad_value(model.pixel_mean)
    sample = sample_images(data_cfg, meta, int(cfg.batch_size), hw, pad)
    with torch.no_grad():
        ref = wrapper(sample)
    if cfg.format == "onnx":
        path = Path(cfg.output or out / "model.onnx")
        got = export_onnx(wrapper, sample, path, int(cfg.opset))
    elif cfg.format == "torchscript":
        path = Path(cfg.output or out / "model.torchscript.pt")
        got = export_torchscript(wrapper, sample, path)
    else:
        raise ConfigError(f"format must be onnx or torchscript, got '{cfg.format}'.")
    diff = largest_box_difference(ref, got)
    (path.parent / f"{path.name}.json").write_text(json.dumps({
        "format": cfg.format, "input": ["B", 3, *hw], "class_names": meta["class_names"],
        "cat_ids": meta["cat_ids"], "outputs": ["boxes", "scores", "labels"], "max_abs_box_diff": diff,
        "preprocess": preprocess_spec(data_cfg, hw, pad),
    }, indent=2) + "\n")
    print(f"exported {cfg.format} model to {path} (input B x 3 x {hw[0]} x {hw[1]}, 0-255 RGB; "
          f"preprocessing in {path.name}.json)")
    print(f"largest |box difference| against PyTorch: {diff:.2e} px (tolerance {cfg.tolerance})")
    if not diff <= float(cfg.tolerance):
        raise DetcliError(f"the exported model at '{path}' differs from PyTorch by {diff:.3g} px, more than "
                          f"tolerance={cfg.tolerance}.")
    return diff


def export_onnx(wrapper: nn.Module, sample: Tensor, path: Path, opset: int) -> tuple:
    import onnxruntime as ort

    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["boxes", "scores", "labels"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: torchvision's NMS has an ONNX symbolic there, and the batch
        # axis stays dynamic through the data-dependent NMS
        torch.onnx.export(
            wrapper, (sample,), str(path), input_names=["images"], output_names=names, opset_version=opset,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": sample.numpy()})
    return tuple(torch.from_numpy(o) for o in outputs)


def export_torchscript(wrapper: nn.Module, sample: Tensor, path: Path) -> tuple:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, sample, check_trace=False)
        traced.save(str(path))
        return torch.jit.load(str(path))(sample)
