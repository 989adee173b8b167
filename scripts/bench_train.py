"""Training throughput of a detcli head against its peer, on the same image size, batch, synthetic boxes
and random weights, measured alternately in one process; and detcli's overhead ratio: a full training
step (assignment, losses, optimizer) over forward + backward + optimizer step of the same backbone +
neck + head with a trivial loss. A step is forward + loss + backward + optimizer step on both sides.

- `--head fcos` (default): detcli FCOS against torchvision's FCOS on the same backbone architecture.
- `--head faster_rcnn`: detcli Faster R-CNN against torchvision's FasterRCNN (fasterrcnn_resnet50_fpn's
  layout: resnet C2-C5, FPN P2-P5 + max-pooled P6, RPN, MultiScaleRoIAlign, TwoMLPHead) on the same
  backbone architecture, size and RPN / RoI sampling settings (detcli's defaults).
- `--head yolox`: detcli YOLOX (cs3darknet_s where detcli has that preset, else resnet18; --backbone
  overrides) against ultralytics' YOLOv8n built from yolov8n.yaml with the same classes, its loss at
  its default gains (ultralytics/cfg/default.yaml). ultralytics is the optional `bench` extra
  (pip install -e .[bench]); without it the ultralytics rows are skipped.

    python scripts/bench_train.py                              # CPU: FCOS resnet18, 256 px, batch 8, defaults
    python scripts/bench_train.py --head yolox --size 256 --batch 8
    python scripts/bench_train.py --head faster_rcnn --backbone resnet50 --size 400 --batch 4
    python scripts/bench_train.py --backbone resnet50 --size 800 --batch 8 --precision bf16 --channels-last

By default each side trains at its own defaults, what a user of each gets without naming an option: detcli
at its trainer defaults (trainer.precision=auto: fp32 on a CPU, bf16 autocast on a GPU with bf16;
trainer.channels_last=true), the peer in fp32, contiguous (torchvision's reference recipe;
ultralytics' AMP is GPU-only). An explicit `--precision` (and `--channels-last`) applies to both sides alike.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchkit.common import (
    DTYPES,
    PEERS,
    compose_model,
    default_backbone,
    load_ultralytics,
    report,
    ultralytics_batch,
    yolov8n,
)
from benchkit.torchvision_models import TORCHVISION_MODELS, share_faster_rcnn_weights
from detcli.deploy.benchmark import synthetic_batch, timed, train_step
from detcli.device import resolve_precision

# what each head's issue asks of it against its peer, printed beside the ratio
TRAIN_TARGETS = {"fcos": "torchvision (target >= 1.5 on CPU)", "faster_rcnn": "torchvision (target > 1)",
                 "yolox": "ultralytics YOLOv8n"}


def trivial_loss(out: dict) -> torch.Tensor:
    """The mean of every predicted tensor (those with a gradient; the grid constants have none)."""
    return sum(v.float().mean() for v in out.values() if torch.is_tensor(v) and v.requires_grad)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=True)


def peer_loss(peer: str, args, batch: dict, fmt, device: torch.device, num_classes: int, ours=None):
    """(model, zero-argument loss function) of the peer on the same batch; None where it is missing."""
    if peer == "torchvision":
        model = TORCHVISION_MODELS[args.head](args.backbone, args.size, num_classes)
        if args.head == "faster_rcnn":
            share_faster_rcnn_weights(model, ours)
        model = model.to(device).to(memory_format=fmt).train()
        images = list((batch["images"].float() / 255).contiguous(memory_format=fmt))
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])]
        return model, lambda: sum(model(images, targets).values())
    if load_ultralytics() is None:
        return None
    model = yolov8n(num_classes).to(device).to(memory_format=fmt).train()  # its loss is built on this device
    ubatch = ultralytics_batch(batch)
    ubatch["img"] = ubatch["img"].contiguous(memory_format=fmt)
    return model, lambda: model.loss(ubatch)[0].sum()  # as its trainer: (box, cls, dfl) x batch, summed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="fcos", choices=list(PEERS),
                   help="fcos, faster_rcnn: against torchvision; yolox: against ultralytics")
    p.add_argument("--backbone", default=None,
                   help="default: resnet18 (fcos, faster_rcnn; the same architecture in timm and torchvision), "
                        "cs3darknet_s (yolox)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides of detcli's model config, e.g. neck.width=0.25 (the peer is unchanged)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="default", choices=["default", *DTYPES, "auto"],
                   help="default: each side at its own defaults (detcli: trainer.precision=auto + channels last; "
                        "the peer: fp32, contiguous); else the autocast dtype of both sides (auto: detcli's rule)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile detcli's model (trainer.compile=true)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak TFLOP/s at --precision, for MFU (default: known GPUs' bf16 / "
                        "fp16 / tf32 peaks; none on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core); 1 on a CPU shared with others")
    p.add_argument("--out", default="runs/bench/train.json")
    args = p.parse_args()
    args.backbone = args.backbone or default_backbone(args.head)
    args.defaults = args.precision == "default"
    if args.defaults:  # detcli's trainer defaults (configs/trainer/default.yaml)
        args.precision, args.channels_last = "auto", True
    args.precision = resolve_precision(args.precision, torch.device(args.device))
    # the peer: its own defaults (fp32, contiguous) or, with an explicit --precision, the same as detcli
    args.peer_precision = "fp32" if args.defaults else args.precision
    args.peer_channels_last = args.channels_last and not args.defaults
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = parse_args()
    device, dtype, C, peer = torch.device(args.device), DTYPES[args.precision], 80, PEERS[args.head]
    torch.manual_seed(0)
    batch = {k: v.to(device) for k, v in synthetic_batch(args.batch, args.size, C).items()}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    images = batch["images"].contiguous(memory_format=fmt)

    ours, _ = compose_model([f"backbone={args.backbone}", f"head={args.head}", *args.set], num_classes=C)
    ours = ours.to(device).to(memory_format=fmt).train()
    opt_ours = sgd(ours)
    targets = {"boxes": batch["boxes"], "labels": batch["labels"]}
    flops = step_flops(lambda: sum(ours(images, targets).values()), device, dtype)  # counted before compiling
    run_model = torch.compile(ours) if args.compile else ours

    def full():
        return sum(run_model(images, targets).values())

    def trivial():
        return trivial_loss(ours.predict(images, targets=targets))

    runs = {"detcli": lambda: train_step(opt_ours, full, device, dtype),
            "trivial": lambda: train_step(opt_ours, trivial, device, dtype)}
    peer_fmt = torch.channels_last if args.peer_channels_last else torch.contiguous_format
    theirs = peer_loss(peer, args, batch, peer_fmt, device, C, ours)
    if theirs is not None:
        opt_theirs = sgd(theirs[0])
        runs[peer] = lambda: train_step(opt_theirs, theirs[1], device, DTYPES[args.peer_precision])
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):  # alternate, keep each one's best round
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, warmup=1, iters=args.iters, device=device))
    summarize(args, device, peer, best, flops)


# dense peak TFLOP/s by GPU name and precision (NVIDIA's datasheets, SXM parts; tf32 for fp32 matmuls)
PEAK_TFLOPS = {"H200": {"bf16": 989, "fp16": 989, "fp32": 495}, "H100": {"bf16": 989, "fp16": 989, "fp32": 495},
               "A100": {"bf16": 312, "fp16": 312, "fp32": 156}, "L4": {"bf16": 121, "fp16": 121, "fp32": 60},
               "A10": {"bf16": 125, "fp16": 125, "fp32": 62}}


def peak_tflops(args, device: torch.device) -> float | None:
    if args.peak_tflops or device.type != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name(device)
    return next((v[args.precision] for k, v in PEAK_TFLOPS.items() if k in name), None)


def step_flops(loss_fn, device: torch.device, dtype) -> float:
    """Model FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode on a real
    call (matmuls and convolutions: the usual MFU numerator)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss_fn().backward()
    return float(counter.get_total_flops())


def summarize(args, device: torch.device, peer: str, best: dict[str, float], flops: float) -> None:
    """The table and the JSON: images/s of each run, detcli over its peer (when measured), the overhead."""
    ips = {k: args.batch / v for k, v in best.items()}
    speedup = ips["detcli"] / ips[peer] if peer in ips else None
    result = {"args": vars(args), "threads": torch.get_num_threads(), "img_per_s": ips,
              f"speedup_vs_{peer}": speedup, "overhead_ratio": best["detcli"] / best["trivial"]}
    extra = []
    if speedup is not None:
        extra.append((f"detcli / {TRAIN_TARGETS[args.head]}", f"{speedup:.2f}x"))
    overhead = result["overhead_ratio"]
    extra.append(("overhead: full step / trivial-loss step (target <= 1.10)", f"{overhead:.3f}"))
    result["step_tflop"] = flops / 1e12  # counted forward + backward of one step (the whole batch)
    result["achieved_tflops"] = flops / best["detcli"] / 1e12
    extra.append(("achieved TFLOP/s (counted model FLOPs)", f"{result['achieved_tflops']:.2f}"))
    peak = peak_tflops(args, device)
    if peak:
        result["mfu"] = result["achieved_tflops"] / peak
        extra.append((f"MFU (of {peak:g} TFLOP/s dense {args.precision} peak)", f"{100 * result['mfu']:.1f} %"))
    flags = (", channels-last" if args.channels_last else "") + (", compiled" if args.compile else "")
    peer_flags = ", channels-last" if args.peer_channels_last else ""
    report(f"training, {args.head.upper()} {args.backbone}, {args.batch} x {args.size} px, {device}: detcli "
           f"{args.precision}{flags}" + (f", {peer} {args.peer_precision}{peer_flags}" if peer in ips else "")
           + (" (each at its defaults)" if args.defaults else ""), ips, extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
