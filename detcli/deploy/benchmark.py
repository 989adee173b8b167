"""What measuring a detector on this machine takes, shared by `detcli bench` and scripts/bench_*.py: the
timing loop, synthetic batches, an onnxruntime session (or an OpenVINO model) of the exported graph and one
training step.

Naming: B = images, M = boxes per image, H, W = image height and width.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from detcli.deploy.onnx import OUTPUTS, Exportable, write_onnx
from detcli.deploy.ort import inference_session
from detcli.deploy.quantize import quantize_int8


def timed(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> float:
    """Seconds per call, after warmup calls, with the device synchronised around the timed loop."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters


def synthetic_batch(batch: int, size: int, num_classes: int, boxes_per_image: int = 8, seed: int = 0) -> dict:
    """Random images (0-255) and random boxes between 16 and size/2 pixels, fixed by seed."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, boxes_per_image, 2, generator=g) * size * 0.5  # (B, M, 2)
    wh = torch.rand(batch, boxes_per_image, 2, generator=g) * size * 0.45 + 16  # (B, M, 2)
    return {
        "images": (torch.rand(batch, 3, size, size, generator=g) * 255).to(torch.uint8),  # (B, 3, H, W)
        "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], -1),  # (B, M, 4) x1y1x2y2
        "labels": torch.randint(0, num_classes, (batch, boxes_per_image), generator=g),  # (B, M)
    }


def train_step(optimizer: torch.optim.Optimizer, loss_fn: Callable[[], Tensor], device: torch.device,
               dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """One optimizer step as the trainer takes it: loss_fn() under one autocast block (dtype None: fp32),
    backward (through the GradScaler for fp16), optimizer step, gradients freed."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = loss_fn()
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def onnx_session(model: nn.Module, images: Tensor, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 int8_calibration: Tensor | None = None):
    """An onnxruntime session of `detcli export`'s graph of the model (NMS included, dynamic batch) for
    the images' H x W, traced on a CPU copy and checked there; the graph file is gone once loaded.
    `int8_calibration` (N, 3, H, W): the session of its int8 graph instead (`export.quantize=int8`'s),
    calibrated on those images."""
    on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    with tempfile.TemporaryDirectory(prefix="detcli_bench_") as folder:
        path = Path(folder) / "model.onnx"
        write_onnx(Exportable(on_cpu).eval(), images.float().cpu(), path, opset=17)
        if int8_calibration is not None:
            quantize_int8(path, path.with_suffix(".int8.onnx"), int8_calibration.float().cpu(),
                          type(on_cpu.head).__name__)
            path = path.with_suffix(".int8.onnx")
        return inference_session(path, providers)  # as many intra-op threads as eager PyTorch gets


def openvino_model(model: nn.Module, images: Tensor, precision: str = "fp32", int8_calibration: Tensor | None = None):
    """A function running `detcli export format=openvino`'s IR of the model (NMS included, dynamic batch) for the
    images' H x W in OpenVINO on the CPU at `precision` (fp32 | bf16 | fp16); `int8_calibration` (N, 3, H, W):
    its int8 IR instead (`export.quantize=int8`'s NNCF quantization), calibrated on those images."""
    from detcli.deploy import openvino as ov

    on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    with tempfile.TemporaryDirectory(prefix="detcli_bench_") as folder:
        path = Path(folder) / "model.xml"
        ov.export_openvino(Exportable(on_cpu).eval(), images.float().cpu(), path, opset=17, names=OUTPUTS[True])
        if int8_calibration is not None:
            ov.quantize_openvino(path, ov.int8_xml(path), int8_calibration.float().cpu(), type(on_cpu.head).__name__)
            path = ov.int8_xml(path)
        return ov.openvino_runner(path, precision)  # compiled: the files may go
