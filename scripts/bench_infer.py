"""Inference throughput (decode + NMS included) of a detcli head against its peer on the same image size,
batch and random weights, and detcli's ONNX export in onnxruntime against eager PyTorch. Both sides'
classification biases are set so that every candidate starts at the same score (0.2), so that both
decode and suppress a comparable number of candidates, each with its own default postprocess.

- `--head fcos` (default): detcli FCOS against torchvision's FCOS on the same backbone architecture.
- `--head faster_rcnn`: detcli Faster R-CNN against torchvision's FasterRCNN (bench_train.py says how it is
  built). A softmax over 81 classes cannot give every class 0.2: both sides' box predictors start with
  four classes at 0.2 each and the background at 0.2, the others near 0, so each proposal brings four
  candidates into the class-wise NMS on both sides.
- `--head yolox`: detcli YOLOX (cs3darknet_s where detcli has that preset, else resnet18; --backbone
  overrides), `model(images)` in eval mode, against ultralytics' YOLOv8n from yolov8n.yaml as its
  validator runs it: Conv+BN fused, forward, then its own non_max_suppression at its val defaults
  (conf 0.001, iou 0.7, multi-label, max_det 300, up to 30000 boxes into NMS) but without its time
  limit (2 s + 0.05 s per image, past which it skips the batch's remaining images: on a slow CPU it
  would be timed on less work). YOLOX's score is objectness x class, so both of its biases start at
  sqrt(0.2). At that score every (box, class) pair passes conf 0.001, so ultralytics' NMS gets its
  maximum, 30000 boxes per image, where detcli keeps 1000 per level: a second ratio times the networks
  alone (no decode, no NMS). ultralytics is the optional `bench` extra (pip install -e .[bench]);
  without it the ultralytics rows are skipped.

    python scripts/bench_infer.py                      # CPU: FCOS resnet18, 256 px, batch 8, defaults
    python scripts/bench_infer.py --head yolox --size 256 --batch 8
    python scripts/bench_infer.py --head faster_rcnn --size 256 --batch 8
    python scripts/bench_infer.py --precision bf16 --channels-last --threads 1   # both sides alike
    python scripts/bench_infer.py --threads 2 --int8    # also the int8 graph (export.quantize=int8)

By default each side runs at its own defaults, what a user of each gets without naming an option: detcli
as `detcli predict` runs (precision auto: bf16 autocast on a CPU with bf16 instructions or a GPU with bf16,
else fp32; channels last), the peer in fp32, contiguous. An explicit `--precision` (and `--channels-last`)
applies to both sides alike (autocast around each call, images and weights in that memory format), as in
bench_train.py; `--compile` torch.compiles detcli's model only. The onnxruntime rows run detcli's fp32 graph
(and with --int8 its int8 graph) whatever the eager settings.

On the CPU every run prints onnxruntime / eager (detcli's ONNX export in onnxruntime, the session options
of detcli/deploy/ort.py, as many intra-op threads as torch has: --threads sets both); with --int8
also the int8 graph's images/s and its ratios to eager and to the fp32 graph. Where OpenVINO is installed
(the `openvino` extra), the same graph as `detcli export format=openvino` writes it, in OpenVINO
(detcli/deploy/openvino.py: as many threads as torch) in fp32 and at detcli's inference precision (bf16 on a
CPU that computes it natively), and with --int8 its NNCF int8 IR: each against eager and onnxruntime fp32.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from benchkit.common import (
    DTYPES,
    PEERS,
    compose_model,
    default_backbone,
    load_ultralytics,
    report,
    ultralytics_nms,
    yolov8n,
)
from benchkit.torchvision_models import TORCHVISION_MODELS, share_faster_rcnn_weights
from detcli.deploy.benchmark import onnx_session, openvino_model, synthetic_batch, timed
from detcli.device import resolve_precision

SCORE = 0.2  # every candidate's initial score, on both sides


def logit(p: float) -> float:
    return -math.log((1 - p) / p)


def four_class_prior(layer: torch.nn.Linear, background: int) -> None:
    """Softmax classifier with 4 classes and the background at SCORE each (logit 0), the rest at e^-30."""
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.constant_(layer.bias, -30.0)
    with torch.no_grad():
        first = 1 if background == 0 else 0
        layer.bias[first : first + 4] = 0.0
        layer.bias[background] = 0.0


def set_detcli_prior(model, head: str) -> None:
    if head == "faster_rcnn":
        four_class_prior(model.head.cls_score, background=model.head.num_classes)  # background last
        return
    if head == "fcos":
        torch.nn.init.constant_(model.head.cls_logits.bias, logit(SCORE))
        return
    for pred in (*model.head.cls_preds, *model.head.obj_preds):  # score = objectness x class
        torch.nn.init.constant_(pred.bias, logit(math.sqrt(SCORE)))


def inference(fn, device: torch.device, dtype):
    """fn as a zero-argument inference call: no grad, under autocast at dtype (None: fp32)."""
    def call():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return fn()

    return call


def peer_runs(peer: str, args, images: torch.Tensor, device: torch.device, num_classes: int, ours) -> dict:
    """The peer's inference on the same images (decode + NMS) as zero-argument functions, by run name:
    ultralytics also without decode and NMS ("ultralytics network"); none where it is not installed."""
    if peer == "torchvision":
        model = TORCHVISION_MODELS[args.head](args.backbone, args.size, num_classes)
        if args.head == "faster_rcnn":  # the same network (and so the same proposals), the same class prior
            share_faster_rcnn_weights(model, ours)
        else:
            torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, logit(SCORE))
        model = model.to(device).to(memory_format=args.peer_fmt).eval()
        tv_images = list((images.float() / 255).contiguous(memory_format=args.peer_fmt))
        return {peer: inference(lambda: model(tv_images), device, args.peer_dtype)}
    if load_ultralytics() is None:
        return {}
    model = yolov8n(num_classes)
    for branch in model.model[-1].cv3:  # the Detect head's class convs, one per level
        torch.nn.init.constant_(branch[-1].bias, logit(SCORE))
    model = model.fuse(verbose=False).to(device).to(memory_format=args.peer_fmt).eval()  # its validator fuses Conv+BN
    nms, uimages = ultralytics_nms(), (images.float() / 255).contiguous(memory_format=args.peer_fmt)

    def infer():  # as ultralytics/models/yolo/detect/val.py postprocesses, minus the time limit
        preds = model(uimages)
        with torch.autocast(device.type, enabled=False):
            return nms(preds, 0.001, 0.7, multi_label=True, max_det=300, max_time_img=math.inf)

    return {peer: inference(infer, device, args.peer_dtype),
            f"{peer} network": inference(lambda: model(uimages), device, args.peer_dtype)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="fcos", choices=list(PEERS),
                   help="fcos, faster_rcnn: against torchvision; yolox: against ultralytics")
    p.add_argument("--backbone", default=None, help="default: resnet18 (fcos, faster_rcnn), cs3darknet_s (yolox)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides of detcli's model config, e.g. neck.width=0.25 (the peer is unchanged)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="default", choices=["default", *DTYPES, "auto"],
                   help="default: each side at its own defaults (detcli: precision auto + channels last, as "
                        "`detcli predict` runs; the peer: fp32, contiguous); else the autocast dtype of both sides "
                        "(auto: detcli's trainer.precision=auto on --device)")
    p.add_argument("--channels-last", action="store_true", help="channels-last images and weights, both sides")
    p.add_argument("--compile", action="store_true", help="torch.compile detcli's model (compiled before timing)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core); 1 on a CPU shared with others")
    p.add_argument("--int8", action="store_true",
                   help="also export.quantize=int8's graph in onnxruntime (CPU), calibrated on 16 synthetic images")
    p.add_argument("--out", default="runs/bench/infer.json")
    args = p.parse_args()
    args.backbone = args.backbone or default_backbone(args.head)
    args.defaults = args.precision == "default"
    if args.defaults:  # detcli's predict defaults (configs/predict.yaml: precision auto, channels_last true)
        args.precision, args.channels_last = "auto", True
    args.precision = resolve_precision(args.precision, torch.device(args.device), inference=True)
    args.dtype = DTYPES[args.precision]
    args.fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    # the peer: its own defaults (fp32, contiguous) or, with an explicit --precision, the same as detcli
    args.peer_precision = "fp32" if args.defaults else args.precision
    args.peer_dtype = DTYPES[args.peer_precision]
    args.peer_fmt = torch.contiguous_format if args.defaults else args.fmt
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def openvino_installed() -> bool:
    """OpenVINO and NNCF (the `openvino` extra) importable: the OpenVINO rows are measured, else skipped."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def main() -> None:
    args = parse_args()
    device, C, peer = torch.device(args.device), 80, PEERS[args.head]
    torch.manual_seed(0)
    images = synthetic_batch(args.batch, args.size, C)["images"].to(device)
    ours, _ = compose_model([f"backbone={args.backbone}", f"head={args.head}", *args.set], num_classes=C)
    set_detcli_prior(ours, args.head)
    ours = ours.to(device).to(memory_format=args.fmt).eval()
    run_model = torch.compile(ours) if args.compile else ours
    ours_images = images.contiguous(memory_format=args.fmt)
    compile_s = timed(inference(lambda: run_model(ours_images), device, args.dtype), 0, 1, device) \
        if args.compile else None  # the first call compiles: timed apart
    runs = {"detcli": inference(lambda: run_model(ours_images), device, args.dtype),
            **peer_runs(peer, args, images, device, C, ours)}
    if f"{peer} network" in runs:  # the same without decode and NMS, for what the postprocess costs
        runs["detcli network"] = inference(lambda: ours.predict(ours_images), device, args.dtype)
    # onnxruntime runs the fp32 graph of the same model whatever the eager settings (not beside --compile)
    session = onnx_session(ours, images) if device.type == "cpu" and not args.compile else None
    if session is not None:
        feed = {"images": images.float().numpy()}
        runs["detcli onnxruntime"] = lambda: session.run(None, feed)
    calibration = torch.cat([synthetic_batch(8, args.size, C, seed=s)["images"] for s in (1, 2)])  # (16, 3, S, S)
    if session is not None and args.int8:
        int8 = onnx_session(ours, images, int8_calibration=calibration)
        runs["detcli onnxruntime int8"] = lambda: int8.run(None, feed)
    if session is not None and openvino_installed():  # the same graph as OpenVINO IR: fp32, detcli's precision, int8
        cpu_images = images.float().cpu()
        for precision in dict.fromkeys(("fp32", args.precision)):
            run_ov = openvino_model(ours, images, precision)
            runs[f"detcli openvino {precision}"] = lambda run_ov=run_ov: run_ov(cpu_images)
        if args.int8:
            run_int8 = openvino_model(ours, images, "fp32", int8_calibration=calibration)
            runs["detcli openvino int8"] = lambda: run_int8(cpu_images)
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, warmup=1, iters=args.iters, device=device))
    summarize(args, device, peer, {k: args.batch / v for k, v in best.items()}, compile_s)


def summarize(args, device: torch.device, peer: str, ips: dict[str, float], compile_s: float | None) -> None:
    """The table and the JSON: images/s of each run, detcli over its peer (when measured), onnxruntime."""
    settings = {k: v for k, v in vars(args).items() if k not in ("dtype", "fmt", "peer_dtype", "peer_fmt")}
    result = {"args": settings, "threads": torch.get_num_threads(), "img_per_s": ips,
              f"speedup_vs_{peer}": ips["detcli"] / ips[peer] if peer in ips else None, "compile_s": compile_s}
    extra = []
    if peer in ips:
        name = {"fcos": "torchvision (target >= 1.3 on CPU)", "faster_rcnn": "torchvision (target > 1)"}.get(
            args.head, "ultralytics YOLOv8n")
        extra.append((f"detcli / {name}", f"{result[f'speedup_vs_{peer}']:.2f}x"))
    if f"{peer} network" in ips:
        result[f"network_speedup_vs_{peer}"] = ips["detcli network"] / ips[f"{peer} network"]
        extra.append(("  network only (no decode, no NMS)", f"{result[f'network_speedup_vs_{peer}']:.2f}x"))
    if "detcli onnxruntime" in ips:
        result["onnxruntime_vs_eager"] = ips["detcli onnxruntime"] / ips["detcli"]
        extra.append(("onnxruntime / eager (target >= 1.5 on CPU)", f"{result['onnxruntime_vs_eager']:.2f}x"))
    if "detcli onnxruntime int8" in ips:
        result["int8_vs_eager"] = ips["detcli onnxruntime int8"] / ips["detcli"]
        result["int8_vs_onnxruntime"] = ips["detcli onnxruntime int8"] / ips["detcli onnxruntime"]
        extra.append(("onnxruntime int8 / eager", f"{result['int8_vs_eager']:.2f}x"))
        extra.append(("onnxruntime int8 / onnxruntime fp32", f"{result['int8_vs_onnxruntime']:.2f}x"))
    for name in [k for k in ips if k.startswith("detcli openvino")]:
        key = name.removeprefix("detcli ").replace(" ", "_")
        result[f"{key}_vs_eager"] = ips[name] / ips["detcli"]
        result[f"{key}_vs_onnxruntime"] = ips[name] / ips["detcli onnxruntime"]
        extra.append((f"{name.removeprefix('detcli ')} / eager, / onnxruntime fp32",
                      f"{result[f'{key}_vs_eager']:.2f}x, {result[f'{key}_vs_onnxruntime']:.2f}x"))
    if compile_s is not None:
        extra.append(("torch.compile: first call (compiling), s", f"{compile_s:.1f}"))
    flags = (", channels-last" if args.channels_last else "") + (", compiled" if args.compile else "")
    peer_flags = ", channels-last" if args.peer_fmt == torch.channels_last else ""
    title = (f"inference, {args.head.upper()} {args.backbone}, {args.batch} x {args.size} px, {device}: detcli "
             f"{args.precision}{flags}" + (f", {peer} {args.peer_precision}{peer_flags}" if peer in ips else "")
             + (" (each at its defaults)" if args.defaults else ""))
    report(title, ips, extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
