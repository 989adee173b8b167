"""The backends of `detcli predict`: a model that turns a batch of preprocessed images into per-image
detections in original pixels, with the classes and the preprocessing it expects.

- torch: the checkpoint's model in PyTorch (`checkpoint=PATH`), preprocessed as its data config says;
- onnx: a graph written by `detcli export format=onnx export.nms=true` (`predict.onnx=PATH`) in onnxruntime,
  its `.json` sidecar giving the classes and the preprocessing. The graph's NMS output has the same fixed
  shape as the PyTorch model's, so every backend shares everything after it;
- openvino: an IR written by `detcli export format=openvino` (`predict.openvino=PATH`, model.xml or
  model.int8.xml) in OpenVINO on the CPU, read as the onnx backend reads its graph.

Each backend's `thresholds` (C,) is the score a detection of each class needs: `predict.score_thresh` when
given, else the per-class F1-optimal thresholds training stored (checkpoint meta / sidecar
`score_thresholds`, detcli/evaluation/thresholds.py), DEFAULT_THRESH for a class without one or a model
without them.

Naming: B = images, D = detections per image, H, W = the graph's input size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from detcli.build import load_model, model_source
from detcli.data.collate import pad_value
from detcli.deploy.ort import inference_session
from detcli.deploy.sidecar import export_data_config
from detcli.device import autocast_dtype, resolve_device, resolve_precision
from detcli.errors import ConfigError
from detcli.evaluation.evaluator import to_original
from detcli.evaluation.thresholds import DEFAULT_THRESH

log = logging.getLogger("detcli")
SIDECAR_KEYS = ("format", "outputs", "input", "class_names", "cat_ids", "score_thresh", "max_det", "preprocess")


class TorchPredictor:
    """The checkpoint's model; `predict.max_det` and a `predict.score_thresh` below the model's own
    candidate threshold are set on its postprocess."""

    name = "torch"

    def __init__(self, cfg: DictConfig):
        if not cfg.get("checkpoint") and not cfg.get("weights"):
            raise ConfigError("checkpoint=PATH (or weights=..., e.g. torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1) is "
                              "needed with predict.backend=torch (the default); with predict.backend=onnx give "
                              "predict.onnx=PATH instead.")
        self.path, key = model_source(cfg, "predict")
        self.model, self.ckpt_cfg, meta, self.device = load_model(self.path, cfg.device, cfg.get("postprocess"), key)
        self.data_known = meta["data_known"]  # predict.ann=train|val reads the model's own data
        self.model.postprocess.max_det = int(cfg.predict.max_det)
        self.class_names, self.cat_ids = meta["class_names"], meta["cat_ids"]
        self.thresholds = class_thresholds(cfg, meta.get("score_thresholds"), self.class_names, "checkpoint")
        # a threshold below the model's own candidate threshold lowers it: predict.score_thresh=0 keeps everything
        thresh = min(float(self.model.postprocess.score_thresh), float(self.thresholds.min()))
        self.model.postprocess.score_thresh = thresh
        self.data_cfg = export_data_config(self.ckpt_cfg, cfg.get("image_size"))  # predict's image_size over the model's
        self.pad, self.canvas = pad_value(self.model.pixel_mean), None
        self.dtype = autocast_dtype(str(cfg.get("precision", "fp32")), self.device)
        self.channels_last = bool(cfg.get("channels_last", False))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, batch: dict) -> list[dict[str, Tensor]]:
        images = batch["images"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            dets = self.model(images, image_sizes=batch["image_sizes"].to(self.device))
        return to_original(dets, batch)


class GraphPredictor:
    """An exported graph with NMS (`predict.<backend>=PATH`) and its `.json` sidecar, which gives the classes and the
    preprocessing. Its baked postprocess (score threshold, max_det) is a floor: predict can raise it, not lower
    it. The runtime is the subclass's: `open` loads the graph, `run` gives its boxes, scores and labels."""

    name = "graph"

    def __init__(self, cfg: DictConfig):
        key = f"predict.{self.name}"
        if not cfg.predict.get(self.name):
            raise ConfigError(f"predict.backend={self.name} needs {key}=PATH, the {EXPORTS[self.name][0]} written by "
                              f"`detcli export format={self.name}` (its {EXPORTS[self.name][0]}.json sidecar beside it).")
        path = Path(str(cfg.predict.get(self.name))).expanduser()
        sidecar = read_sidecar(path, self.name)
        self.class_names, self.cat_ids = sidecar["class_names"], sidecar["cat_ids"]
        self.thresholds = class_thresholds(cfg, sidecar.get("score_thresholds"), self.class_names, "sidecar")
        spec = sidecar["preprocess"]
        self.data_cfg = OmegaConf.create({
            "image_size": spec["resize"]["image_size"], "letterbox": spec["letterbox"],
            "size_divisible": spec.get("size_divisible", 32), "val_transforms": spec["val_transforms"],
        })
        self.pad = tuple(spec["pad"]["value"])
        # a fixed-size graph gets every batch padded to its H x W; a dynamic one what the PyTorch model gets
        self.canvas = None if sidecar.get("dynamic") else tuple(sidecar["input"][2:])
        self.ckpt_cfg = None
        self.max_det = int(cfg.predict.max_det)
        self.nms_thresh = float(sidecar.get("nms_thresh", 0.5))  # written since predict.tile; older: 0.5
        self.path = str(path)
        warn_floor(cfg, sidecar, path, float(self.thresholds.min()))
        self.open(path, cfg)

    def open(self, path: Path, cfg: DictConfig) -> None:
        raise NotImplementedError

    def run(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, D, 4) boxes, (B, D) scores, (B, D) labels of (B, 3, H, W) float images."""
        raise NotImplementedError

    def __call__(self, batch: dict) -> list[dict[str, Tensor]]:
        images = batch["images"]
        if self.canvas:  # a val_transforms may resize past the graph's input: it sees its own H x W
            images = images[..., : self.canvas[0], : self.canvas[1]]
        boxes, scores, labels = self.run(images.float().contiguous())
        dets = {"boxes": boxes[:, : self.max_det], "scores": scores[:, : self.max_det],
                "labels": labels[:, : self.max_det]}  # (B, D, 4), (B, D), (B, D): best first
        return to_original(dets, batch)


class OnnxPredictor(GraphPredictor):
    """A graph of `detcli export format=onnx` in onnxruntime (CUDA when `device` asks for it and onnxruntime has it)."""

    name = "onnx"

    def open(self, path: Path, cfg: DictConfig) -> None:
        import onnxruntime as ort

        cuda = resolve_device(cfg.device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        self.session = inference_session(path, ["CUDAExecutionProvider"] * cuda + ["CPUExecutionProvider"])

    def run(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.session.run(["boxes", "scores", "labels"], {"images": images.numpy()})
        return tuple(torch.from_numpy(o) for o in out)


class OpenVinoPredictor(GraphPredictor):
    """An IR of `detcli export format=openvino` (or its int8 model.int8.xml) in OpenVINO on the CPU, in the
    precision `precision` resolves to for inference there (auto: bf16 on a CPU that computes it natively)."""

    name = "openvino"

    def open(self, path: Path, cfg: DictConfig) -> None:
        from detcli.deploy import openvino as ov

        precision = resolve_precision(str(cfg.get("precision", "auto")), torch.device("cpu"), inference=True)
        self.run_graph = ov.runner(ov.compile_model(path, precision))
        log.info("OpenVINO on the CPU in %s: %s", precision, path)

    def run(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.run_graph(images)[:3]


# backend -> (the model file, its export command)
EXPORTS = {"onnx": ("model.onnx", "detcli export format=onnx"), "openvino": ("model.xml", "detcli export format=openvino")}


def read_sidecar(path: Path, backend: str = "onnx") -> dict:
    """The `.json` sidecar of a graph exported in `backend`'s format, checked to describe a graph with NMS."""
    sidecar_path = path.parent / f"{path.name}.json"
    key = f"predict.{backend}"
    if not path.is_file():
        raise ConfigError(f"{key}: '{path}' does not exist.")
    if not sidecar_path.is_file():
        raise ConfigError(f"{key}: '{path}' has no sidecar '{sidecar_path}': predict reads the classes and the "
                          f"preprocessing from it; export the model with `detcli export format={backend}`, which writes both.")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: the sidecar '{sidecar_path}' is not valid JSON (line {e.lineno}: "
                          f"{e.msg}).") from e
    missing = [k for k in SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise ConfigError(f"{key}: the sidecar '{sidecar_path}' lacks {', '.join(missing)}: it is not one the "
                          f"current `detcli export` writes; export the model again.")
    if sidecar.get("format") != backend or "num_dets" not in sidecar.get("outputs", []):
        raise ConfigError(f"{key}: '{path}' is not an {backend} graph with NMS (its sidecar lists outputs "
                          f"{sidecar.get('outputs')}, format {sidecar.get('format')}); predict.backend={backend} needs the "
                          f"detections: export it with `detcli export format={backend} export.nms=true`.")
    return sidecar


def class_thresholds(cfg: DictConfig, stored: list | None, names: list[str], where: str) -> Tensor:
    """(C,) the score threshold per class: predict.score_thresh when given, else the model's stored per-class
    thresholds (`where`: checkpoint or sidecar), DEFAULT_THRESH where a class has none (or none are stored)."""
    given = cfg.predict.get("score_thresh")
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, (int, float)):
            raise ConfigError(f"predict.score_thresh must be a number (one threshold for every class) or null (the "
                              f"model's per-class thresholds), got {given!r}.")
        return torch.full((len(names),), float(given))
    if not stored or len(stored) != len(names):
        log.info("score threshold %s for every class (the %s stores no per-class thresholds)", DEFAULT_THRESH, where)
        return torch.full((len(names),), DEFAULT_THRESH)
    values = [DEFAULT_THRESH if t is None else float(t) for t in stored]
    log.info("score thresholds per class, the %s's F1-optimal ones: %s", where,
             ", ".join(f"{n} {t:.3f}" for n, t in zip(names, values)))
    return torch.tensor(values)


def warn_floor(cfg: DictConfig, sidecar: dict, path: Path, lowest: float) -> None:
    """A warning when predict asks for more than the graph's baked postprocess keeps (`lowest`: the lowest
    class threshold asked for)."""
    if lowest < sidecar["score_thresh"]:
        log.warning("a score threshold of %s is below the one baked into '%s' (%s): detections below %s are not "
                    "in its output.", lowest, path, sidecar["score_thresh"], sidecar["score_thresh"])
    if int(cfg.predict.max_det) > sidecar["max_det"]:
        log.warning("predict.max_det=%s is above the graph's max_det (%s): at most %s detections per image.",
                    cfg.predict.max_det, sidecar["max_det"], sidecar["max_det"])


PREDICTORS = {"torch": TorchPredictor, "onnx": OnnxPredictor, "openvino": OpenVinoPredictor}


def build_predictor(cfg: DictConfig):
    """The backend `predict.backend` names."""
    backend = cfg.predict.get("backend", "torch")
    if backend not in PREDICTORS:
        raise ConfigError(f"predict.backend must be one of {', '.join(PREDICTORS)}, got '{backend}'.")
    return PREDICTORS[backend](cfg)
