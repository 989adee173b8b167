"""detcli bench checkpoint=PATH (or the train config groups: head=... backbone=...): inference latency and
throughput of eager PyTorch, torch.compile and onnxruntime (detcli export's graph, NMS included), and the
training step time, for every bench.batch_sizes x bench.image_sizes on synthetic images; prints a table
with the ratios against eager and writes bench.json in the run folder (train_precision: the training rows'
precision on this device, trainer.precision=auto resolved here; trained_precision: what a checkpoint's run
computed in, from its meta).

The measuring is detcli.deploy.benchmark's, the same code as scripts/bench_*.py. Inference rows come first
and the training rows last, so that every inference row runs the same weights.

Naming: B = images per batch, S = the side of the square input in pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from detcli.build import build_model, load_model
from detcli.data.transforms import image_size_of
from detcli.deploy.benchmark import onnx_session, synthetic_batch, timed, train_step
from detcli.deploy.onnx import input_size
from detcli.device import autocast_dtype, resolve_device, resolve_precision
from detcli.engine.optim import build_optimizer
from detcli.errors import ConfigError
from detcli.models.backbones.timm import resolve_freeze_bn
from detcli.tasks.common import command_overrides, overlay, run_dir

MODEL_GROUPS = ("backbone", "neck", "head", "loss", "postprocess", "experiment")  # fixed by a checkpoint


@dataclass
class Subject:
    """The model measured, the config it comes from (the checkpoint's, or this command's) and its device."""

    model: nn.Module
    config: DictConfig
    num_classes: int
    device: torch.device
    checkpoint: str | None
    trained_precision: str | None = None  # what a checkpoint's run computed in (its meta), where recorded

    def describe(self) -> str:
        c = self.config
        parts = [c.head._target_.rsplit(".", 1)[-1], c.neck._target_.rsplit(".", 1)[-1], str(c.backbone.name)]
        return f"{' + '.join(parts)}, {self.num_classes} classes"


def run(cfg: DictConfig) -> dict:
    out = run_dir()
    b = cfg.bench
    _check_numbers(b)
    if b.threads:
        torch.set_num_threads(int(b.threads))  # onnxruntime's session takes as many
    subject = load_subject(cfg)
    sides = input_sides(b.image_sizes, subject.config.data)
    batches = [int(n) for n in b.batch_sizes]
    rows, compiled = [], CompiledInference(subject.model) if b.compile else None
    for side in sides:
        rows += inference_rows(subject, side, batches, b, compiled)
    if b.train:
        rows += [train_row(subject, side, n, b) for side in sides for n in batches]
    result = {"model": subject.describe(), "checkpoint": subject.checkpoint, "device": str(subject.device),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "train_precision": resolve_precision(str(subject.config.trainer.precision), subject.device),
              "train_precision_setting": str(subject.config.trainer.precision),
              "trained_precision": subject.trained_precision, "rows": rows}
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"written {out / 'bench.json'}")
    return result


def _check_numbers(b: DictConfig) -> None:
    if not b.batch_sizes or any(not _positive_int(n) for n in b.batch_sizes):
        raise ConfigError(f"bench.batch_sizes must be a list of positive integers, got {b.batch_sizes}.")
    if not _positive_int(b.iters) or not isinstance(b.warmup, int) or b.warmup < 0:
        raise ConfigError(f"bench.iters must be a positive integer and bench.warmup zero or more, got "
                          f"iters={b.iters}, warmup={b.warmup}.")
    if b.threads is not None and not _positive_int(b.threads):
        raise ConfigError(f"bench.threads must be null or a positive integer, got {b.threads}.")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_subject(cfg: DictConfig) -> Subject:
    """The checkpoint's model (this command's data.* / trainer.* keys over its config), or a fresh one
    built from this command's config groups with random weights (nothing downloaded)."""
    if cfg.checkpoint:
        overrides = command_overrides(exclude=("checkpoint", "device", "bench"))
        keys = [o.lstrip("+~").split("=")[0] for o in overrides]
        fixed = sorted({k for k in keys if k.replace("/", ".").split(".")[0] in MODEL_GROUPS})
        if fixed:
            raise ConfigError(f"checkpoint={cfg.checkpoint} measures the model stored in it; "
                              f"{', '.join(fixed)} would change that model. Drop them, or leave checkpoint "
                              f"out to build a fresh one.")
        model, ckpt_cfg, meta, device = load_model(cfg.checkpoint, cfg.device)
        config = overlay(ckpt_cfg, cfg, overrides)
        return Subject(model, config, len(meta["class_names"]), device, str(cfg.checkpoint), meta.get("precision"))
    config = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    backbone = config.backbone
    backbone.freeze_bn = resolve_freeze_bn(backbone.get("freeze_bn", "auto"),
                                           backbone.get("pretrained", False), backbone.get("weights"))
    backbone.pretrained, backbone.weights = False, None  # timings need no trained weights
    device = resolve_device(cfg.device)
    model = build_model(config, int(cfg.bench.num_classes)).to(device).eval()
    return Subject(model, config, int(cfg.bench.num_classes), device, None)


def input_sides(sizes, data_cfg: DictConfig) -> list[int]:
    """The square input sides measured: bench.image_sizes rounded up to data.size_divisible, or (null)
    the square that holds data.image_size, the input detcli export makes."""
    divisible = int(data_cfg.get("size_divisible", 32))
    if sizes is None:
        return [input_size(image_size_of(data_cfg.image_size), divisible)[0]]
    if not sizes or any(not _positive_int(s) for s in sizes):
        raise ConfigError(f"bench.image_sizes must be null or a list of positive integers (square input "
                          f"sides in pixels), got {sizes}.")
    return list(dict.fromkeys(input_size(int(s), divisible)[0] for s in sizes))


# ---- rows -----------------------------------------------------------------------------------------
def measured(run: str, fn, batch: int, side: int, b: DictConfig, device: torch.device) -> dict:
    seconds = timed(fn, int(b.warmup), int(b.iters), device)
    return {"run": run, "batch_size": batch, "image_size": side, "status": "ok", "latency_ms": seconds * 1e3,
            "img_per_s": batch / seconds}


def failed(run: str, batch: int, side: int, error: str) -> dict:
    return {"run": run, "batch_size": batch, "image_size": side, "status": "failed", "latency_ms": None,
            "img_per_s": None, "error": error}


def reason(e: Exception) -> str:
    """The first line of an exception, for a failed row."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def against_eager(row: dict, eager: dict) -> dict:
    row["vs_eager"] = row["img_per_s"] / eager["img_per_s"] if row["status"] == "ok" else None
    return row


def inference_rows(subject: Subject, side: int, batches: list[int], b: DictConfig,
                   compiled: CompiledInference | None) -> list[dict]:
    """Eager, torch.compile and onnxruntime inference (decode and NMS included) at one input side."""
    model, device = subject.model.eval(), subject.device
    session = OnnxInference(model, side, batches[0], subject.num_classes, device) if b.onnx else None
    rows = []
    for batch in batches:
        images = synthetic_batch(batch, side, subject.num_classes)["images"].to(device)  # (B, 3, S, S) uint8
        eager = {**measured("eager", eager_inference(model, images), batch, side, b, device), "vs_eager": 1.0}
        rows.append(eager)
        if compiled is not None:
            rows.append(against_eager(compiled.row(images, b, device), eager))
        if session is not None:
            rows.append(against_eager(session.row(images, b, device), eager))
    return rows


def eager_inference(model: nn.Module, images: torch.Tensor):
    return torch.no_grad()(lambda: model(images))


class CompiledInference:
    """torch.compile of the model, compiled at the first call of each input shape (timed apart, as
    compile_s). Once compiling fails (no C++ compiler here, an op it cannot trace), each later row says
    why instead of trying again."""

    def __init__(self, model: nn.Module):
        self.model, self.fn, self.error = model, None, None

    def row(self, images: torch.Tensor, b: DictConfig, device: torch.device) -> dict:
        batch, side = images.shape[0], images.shape[-1]
        if self.error is None:
            try:
                if self.fn is None:
                    self.fn = torch.compile(self.model)
                infer = torch.no_grad()(lambda: self.fn(images))
                compile_s = timed(infer, 0, 1, device)
                return {**measured("torch.compile", infer, batch, side, b, device), "compile_s": compile_s}
            except Exception as e:  # noqa: BLE001 - any backend failure is this row's result, not the run's
                self.error = reason(e)
                torch._dynamo.reset()
        return failed("torch.compile", batch, side, self.error)


class OnnxInference:
    """detcli export's ONNX graph for one input side (traced at the first batch size, the batch axis
    dynamic) in onnxruntime: on the GPU where the device is one and onnxruntime has CUDA, else on the CPU.
    An export or session failure is each of its rows' result."""

    def __init__(self, model: nn.Module, side: int, batch: int, num_classes: int, device: torch.device):
        self.session, self.error, self.provider = None, None, "CPUExecutionProvider"
        try:
            import onnxruntime as ort

            providers: tuple[str, ...] = (self.provider,)
            if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                self.provider = "CUDAExecutionProvider"
                providers = (self.provider, *providers)  # the CPU for the ops CUDA lacks
            sample = synthetic_batch(batch, side, num_classes)["images"]  # (B, 3, S, S)
            self.session = onnx_session(model, sample, providers)
        except Exception as e:  # noqa: BLE001 - a graph that does not export is this run's rows' result
            self.error = reason(e)

    def row(self, images: torch.Tensor, b: DictConfig, device: torch.device) -> dict:
        batch, side = images.shape[0], images.shape[-1]
        if self.session is None:
            return failed("onnxruntime", batch, side, self.error)
        feed = {"images": images.float().cpu().numpy()}  # (B, 3, S, S) float32 0-255, as the graph takes
        try:
            row = measured("onnxruntime", lambda: self.session.run(None, feed), batch, side, b, device)
        except Exception as e:  # noqa: BLE001 - e.g. a graph that does not take this batch size
            return failed("onnxruntime", batch, side, reason(e))
        return {**row, "provider": self.provider}


def train_row(subject: Subject, side: int, batch: int, b: DictConfig) -> dict:
    """The training step of the model's config (trainer.optimizer, trainer.precision, channels_last and
    gradient checkpointing as it trains) on a synthetic batch with 8 boxes per image."""
    t, model, device = subject.config.trainer, subject.model.train(), subject.device
    fmt = torch.channels_last if t.get("channels_last", False) else torch.contiguous_format
    model.to(memory_format=fmt)
    model.set_grad_checkpointing(bool(t.get("grad_checkpointing", False)))
    data = {k: v.to(device) for k, v in synthetic_batch(batch, side, subject.num_classes).items()}
    images = data["images"].contiguous(memory_format=fmt)  # (B, 3, S, S)
    targets = {"boxes": data["boxes"], "labels": data["labels"]}  # (B, 8, 4), (B, 8)
    optimizer = build_optimizer(t.optimizer, model)
    precision = resolve_precision(str(t.precision), device)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step():
        train_step(optimizer, lambda: sum(model(images, targets).values()), device, dtype, scaler)

    return {**measured("train step", step, batch, side, b, device), "vs_eager": None}


# ---- the table ------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    threads = f"{result['threads']} thread{'s' if result['threads'] != 1 else ''}"
    table = Table(title=f"detcli bench: {result['model']}, {result['device']} ({threads})")
    for name in ("run", "batch", "input", "latency (ms/batch)", "throughput (img/s)", "vs eager", "note"):
        table.add_column(name, justify="left" if name in ("run", "note") else "right")
    for r in result["rows"]:
        ok = r["status"] == "ok"
        table.add_row(r["run"], str(r["batch_size"]), f"{r['image_size']}x{r['image_size']}",
                      f"{r['latency_ms']:.1f}" if ok else "-", f"{r['img_per_s']:.1f}" if ok else "-",
                      f"{r['vs_eager']:.2f}x" if r.get("vs_eager") is not None else "-", note(r, result))
    Console().print(table)
    failures = {(r["run"], r["error"]) for r in result["rows"] if r["status"] != "ok"}
    for run, error in sorted(failures):
        print(f"{run} failed: {error}")


def note(row: dict, result: dict) -> str:
    if row["status"] != "ok":
        return "failed (below)"
    if "compile_s" in row:
        return f"compiled in {row['compile_s']:.1f} s"
    if row["run"] == "onnxruntime" and result["device"].startswith("cuda") and row["provider"] != \
            "CUDAExecutionProvider":
        return "on the CPU (no CUDA in this onnxruntime: pip install onnxruntime-gpu)"
    if row["run"] == "train step":  # this device's precision (trainer.precision=auto resolved here)
        return result["train_precision"]
    return ""
