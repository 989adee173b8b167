"""detcli export checkpoint=PATH format=onnx|torchscript: a graph from raw pixels (B, 3, H, W) to
decoded detections (boxes (B, D, 4), scores (B, D), labels (B, D), NMS included, dynamic batch),
then a check of the exported model against PyTorch on a sample."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from detcli.build import instantiate_group
from detcli.errors import ConfigError, DetcliError
from detcli.tasks.common import load_model, log, run_dir


class Exportable(nn.Module):
    """Detector in eval mode with tuple outputs, as export formats want them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dets = self.model(images)
        return dets["boxes"], dets["scores"], dets["labels"]


def input_size(image_size, size_divisible: int = 32) -> tuple[int, int]:
    """(H, W) of the exported graph: int N -> N x N; [short, max] -> short x max; padded up to a multiple."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[-1])
    return tuple(-(-int(v) // size_divisible) * size_divisible for v in (h, w))


def sample_images(ckpt_cfg: DictConfig, meta: dict, batch: int, hw: tuple[int, int]) -> Tensor:
    """Validation images of the checkpoint's dataset padded to (H, W), or noise when it is not here."""
    try:
        data = instantiate_group("data", ckpt_cfg.data)
        dataset = data.dataset("val", meta["cat_ids"])
        images = torch.zeros(batch, 3, *hw)
        for i in range(batch):
            im = dataset[i % len(dataset)][0][:, : hw[0], : hw[1]]
            images[i, :, : im.shape[1], : im.shape[2]] = im
        return images
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
    hw = input_size(cfg.image_size if cfg.image_size is not None else ckpt_cfg.data.image_size)
    sample = sample_images(ckpt_cfg, meta, int(cfg.batch_size), hw)
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
    }, indent=2) + "\n")
    print(f"exported {cfg.format} model to {path} (input B x 3 x {hw[0]} x {hw[1]}, 0-255 RGB)")
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
