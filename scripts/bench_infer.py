"""Inference throughput (decode + NMS included): detcli FCOS against torchvision's FCOS on the same
backbone architecture and random weights, and detcli's ONNX export in onnxruntime against eager
PyTorch. Both heads' classification biases are set to the same prior (0.2) so that both decode and
suppress a comparable number of candidates.

    python scripts/bench_infer.py                      # CPU: resnet18, 256 px, batch 8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compose_model, report, synthetic_batch, timed
from bench_train import torchvision_fcos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/bench/infer.json")
    args = p.parse_args()
    device, C = torch.device(args.device), 80
    torch.manual_seed(0)
    images = synthetic_batch(args.batch, args.size, C)["images"].to(device)
    ours, _ = compose_model([f"backbone={args.backbone}"], num_classes=C)
    theirs = torchvision_fcos(args.backbone, args.size, C)
    prior = -math.log((1 - 0.2) / 0.2)
    torch.nn.init.constant_(ours.head.cls_logits.bias, prior)
    torch.nn.init.constant_(theirs.head.classification_head.cls_logits.bias, prior)
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    tv_images = list(images.float() / 255)

    @torch.no_grad()
    def detcli_infer():
        return ours(images)

    @torch.no_grad()
    def torchvision_infer():
        return theirs(tv_images)

    runs = {"detcli": detcli_infer, "torchvision": torchvision_infer}
    session = onnx_session(ours, images) if device.type == "cpu" else None
    if session is not None:
        feed = {"images": images.float().numpy()}
        runs["detcli onnxruntime"] = lambda: session.run(None, feed)
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, warmup=1, iters=args.iters, device=device))
    ips = {k: args.batch / v for k, v in best.items()}
    result = {"args": vars(args), "img_per_s": ips, "speedup_vs_torchvision": ips["detcli"] / ips["torchvision"]}
    if session is not None:
        result["onnxruntime_vs_eager"] = ips["detcli onnxruntime"] / ips["detcli"]
    extra = [("detcli / torchvision (target >= 1.3 on CPU)", f"{result['speedup_vs_torchvision']:.2f}x")]
    if session is not None:
        extra.append(("onnxruntime / eager (target >= 1.5 on CPU)", f"{result['onnxruntime_vs_eager']:.2f}x"))
    report(f"inference, FCOS {args.backbone}, {args.batch} x {args.size} px, {device}", ips, extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


def onnx_session(model, images):
    import onnxruntime as ort

    from detcli.tasks.export import Exportable, export_onnx

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(Exportable(model).eval(), images.float(), path, opset=17)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    main()
