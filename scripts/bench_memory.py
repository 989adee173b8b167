"""Peak training memory and step time with gradient checkpointing off / on, in fp32 and bf16, and with the
early backbone stages frozen (`--freeze-at 0 2`: backbone.freeze_at, detectron2's FREEZE_AT).

Each setting runs in its own process (peak RSS is per process): on a GPU the figure is CUDA's peak
allocated memory, on the CPU the process's peak resident set. Prints a table and the on/off ratios,
and writes JSON.

    python scripts/bench_memory.py                       # CPU defaults: FCOS-R50, 2 x 512 px
    python scripts/bench_memory.py --size 800 --batch 4  # on a GPU
    python scripts/bench_memory.py --head faster_rcnn --size 400 --batch 4 --freeze-at 0 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchkit.common import compose_model
from detcli.deploy.benchmark import synthetic_batch, timed, train_step


def child(args) -> None:
    device = torch.device(args.device)
    model, _ = compose_model([f"backbone={args.backbone}", f"head={args.head}",
                              f"backbone.freeze_at={args.freeze_at[0]}"], num_classes=80)
    model = model.to(device).train()
    model.set_grad_checkpointing(args.gc)
    batch = {k: v.to(device) for k, v in synthetic_batch(args.batch, args.size, 80).items()}
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.precision]
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    targets = {"boxes": batch["boxes"], "labels": batch["labels"]}

    def step():
        train_step(opt, lambda: sum(model(batch["images"], targets).values()), device, dtype)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, warmup=1, iters=args.iters, device=device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"peak_mib": peak, "step_s": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="fcos", help="fcos | yolox | faster_rcnn")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--freeze-at", type=int, nargs="+", default=[0],
                   help="backbone.freeze_at values to compare (0: all trained; 2: stem and first stage frozen)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/bench/memory.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from rich.console import Console
    from rich.table import Table

    rows = []
    for precision in ("fp32", "bf16"):
        for freeze_at in args.freeze_at:
            for gc in (False, True):
                cmd = [sys.executable, __file__, "--child", "--head", args.head, "--backbone", args.backbone,
                       "--size", str(args.size), "--batch", str(args.batch), "--iters", str(args.iters),
                       "--device", args.device, "--precision", precision, "--freeze-at", str(freeze_at)]
                cmd += ["--gc"] if gc else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                rows.append({"precision": precision, "freeze_at": freeze_at, "grad_checkpointing": gc,
                             **json.loads(out)})
    kind = "CUDA peak allocated" if args.device.startswith("cuda") else "peak RSS"
    table = Table(title=f"training memory, {args.head} {args.backbone}, {args.batch} x {args.size} px, {args.device}")
    for col in ("precision", "freeze_at", "grad ckpt", f"{kind} (MiB)", "step (s)", "memory / base", "time / base"):
        table.add_column(col, justify="right")
    for r in rows:  # against the same precision with nothing frozen and checkpointing off
        base = next(x for x in rows if x["precision"] == r["precision"] and not x["grad_checkpointing"]
                    and x["freeze_at"] == args.freeze_at[0])
        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
        r["time_ratio"] = r["step_s"] / base["step_s"]
        table.add_row(r["precision"], str(r["freeze_at"]), "on" if r["grad_checkpointing"] else "off",
                      f"{r['peak_mib']:.0f}", f"{r['step_s']:.3f}", f"{r['memory_ratio']:.2f}", f"{r['time_ratio']:.2f}")
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
