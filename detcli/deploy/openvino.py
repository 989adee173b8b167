"""OpenVINO: `detcli export format=openvino` writes the exported graph as OpenVINO IR (`model.xml` + `model.bin`),
converted from the same ONNX graph `format=onnx` writes (NMS included: OpenVINO runs ONNX's NonMaxSuppression),
and `export.quantize=int8` its int8 version through NNCF (post-training quantization). The one place detcli
compiles an OpenVINO model (export's check, `predict.backend=openvino`, scripts/bench_infer.py), so that every
run has the same options:

- the CPU plugin, the LATENCY performance hint (one stream: a batch at a time, as predict feeds it);
- `INFERENCE_NUM_THREADS` = torch's thread count, so that OpenVINO and eager PyTorch use the same cores;
- `INFERENCE_PRECISION_HINT` from detcli's precision: fp32 -> f32 (export's check: exact to ~1e-5 px), bf16 ->
  bf16 (OpenVINO's own default on a CPU with avx512_bf16 / AMX; about 2x the f32 speed there), fp16 -> f16.

int8 (NNCF `quantize`, its default preset): calibrated on `export.calibration_images` training images, with the
input normalisation, the decoding, the score threshold, top-k and NMS (everything outside the backbone, the neck
and the head) in the ignored scope, as the ONNX int8 graph keeps them in fp32 (detcli/deploy/quantize.py).

OpenVINO and NNCF are the optional `openvino` extra (`pip install detcli[openvino]`).

Naming: B = images, N = calibration images, H, W = the graph's input size.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from detcli.errors import ConfigError, DetcliError

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # detcli precision -> OpenVINO inference precision
OUTSIDE_NETWORK = r"^(?!/model/(backbone|neck|head)/).*"  # nodes int8 leaves alone (the ONNX export's module scopes)
INSTALL = "pip install 'detcli[openvino]'"


def openvino():
    """The openvino module, or a ConfigError saying how to install it."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ConfigError(f"format=openvino / predict.backend=openvino need OpenVINO, which is not installed here "
                          f"({e}): `{INSTALL}` installs it (and NNCF, for export.quantize=int8).") from e
    return ov


def xml_path(path: Path) -> Path:
    """The IR's .xml for an output path (model.xml, or `<name>.xml` for any other name)."""
    return path if path.suffix == ".xml" else path.with_name(path.name + ".xml")


def int8_xml(path: Path) -> Path:
    """Where the int8 IR of `path` goes: model.xml -> model.int8.xml."""
    return path.with_suffix(".int8.xml")


def compile_model(model, precision: str = "fp32", threads: int | None = None):
    """An OpenVINO CompiledModel on the CPU of `model` (an .xml path or an ov.Model) with detcli's options."""
    ov = openvino()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
              "INFERENCE_PRECISION_HINT": HINTS[precision]}
    return ov.Core().compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)


def runner(compiled):
    """A function running a CompiledModel on (B, 3, H, W) float images: its outputs, in order, as tensors."""
    request = compiled.create_infer_request()

    def run(images: Tensor) -> tuple[Tensor, ...]:
        out = request.infer({0: np.ascontiguousarray(images.float().numpy())})
        return tuple(torch.from_numpy(np.array(out[o])) for o in compiled.outputs)

    return run


def export_openvino(wrapper: nn.Module, sample: Tensor, path: Path, opset: int, names: list[str],
                    dynamic: bool = False):
    """Writes the OpenVINO IR of the ONNX graph of `wrapper` (path: the .xml; its .bin beside it, fp32 weights);
    returns a function running it in fp32."""
    from detcli.deploy.onnx import write_onnx

    ov = openvino()
    with tempfile.TemporaryDirectory(prefix="detcli_openvino_") as folder:
        onnx = Path(folder) / "model.onnx"
        write_onnx(wrapper, sample, onnx, opset, names, dynamic)
        model = ov.convert_model(str(onnx))
    ov.save_model(model, str(path), compress_to_fp16=False)  # the check holds the fp32 weights to 1e-3 px
    return openvino_runner(path)


def openvino_runner(path: Path, precision: str = "fp32"):
    """A function running the IR at `path` in OpenVINO on the CPU, outputs as a tuple of tensors."""
    return runner(compile_model(path, precision))


def quantize_openvino(fp32: Path, out: Path, calibration: Tensor, head: str, batch: int = 8) -> None:
    """Writes the int8 IR of the IR `fp32` to `out` with NNCF, calibrated on (N, 3, H, W) images. Raises a
    DetcliError naming the head if quantization fails."""
    ov = openvino()
    try:
        import nncf
    except ImportError as e:
        raise ConfigError(f"format=openvino export.quantize=int8 needs NNCF, which is not installed here ({e}): "
                          f"`{INSTALL}` installs it.") from e
    nncf_log = logging.getLogger("nncf")
    level, nncf_log.level = nncf_log.level, logging.ERROR  # NNCF logs every node it leaves alone
    try:
        model = ov.Core().read_model(str(fp32))
        batches = [np.ascontiguousarray(b.float().numpy()) for b in calibration.split(batch)]
        keep = nncf.IgnoredScope(patterns=[OUTSIDE_NETWORK], validate=False)
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=keep)
        ov.save_model(quantized, str(out), compress_to_fp16=False)
    except Exception as e:  # any quantizer failure: one clear message
        out.unlink(missing_ok=True)
        out.with_suffix(".bin").unlink(missing_ok=True)
        why = " ".join(str(e).split())  # OpenVINO's messages span lines: one paragraph
        raise DetcliError(f"int8 quantization (NNCF) of the {head} IR '{fp32}' failed: {why} No int8 model was "
                          f"written; export without export.quantize.") from e
    finally:
        nncf_log.level = level


def quantized_ops(path: Path) -> list[str]:
    """The names of the IR's nodes that NNCF quantized (their FakeQuantize nodes, without the suffix)."""
    model = openvino().Core().read_model(str(path))
    return [re.sub(r"/fq_\w+$", "", op.get_friendly_name()) for op in model.get_ops()
            if op.get_type_name() == "FakeQuantize"]
