"""The headline table of scripts/bench_gpu.sh, from the JSON its runs wrote into one folder: training img/s
and the ratio against the peer's fp32 recipe (target >= 3x for FCOS), MFU (target >= 30 %), the memory
gradient checkpointing saves (target >= 40 % less at <= 25 % more step time) and whether the data loader
keeps up with the fastest step rate. Writes summary.json beside the runs.

    python scripts/bench_gpu_summary.py runs/bench/gpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", type=Path, default=Path("runs/bench/gpu"), help="the runs' JSON")
    folder = p.parse_args().folder
    summary: dict = {"training": [], "memory": [], "data": None}
    fcos_fp32 = load(folder, "fcos_fp32")
    peer_fp32 = fcos_fp32["img_per_s"].get("torchvision") if fcos_fp32 else None
    table = Table(title=f"training ({folder})")
    for col in ("run", "detcli img/s", "peer img/s (same settings)", "detcli / peer", "detcli / peer's fp32",
                "TFLOP/s", "MFU"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name in ("fcos_fp32", "fcos_bf16", "fcos_bf16_cl", "fcos_bf16_cl_compile", "yolox_bf16_cl",
                 "faster_rcnn_bf16_cl"):
        run = load(folder, name)
        if run is None:
            continue
        ips = run["img_per_s"]
        peer = next((k for k in ("torchvision", "ultralytics") if k in ips), None)
        vs_fp32 = ips["detcli"] / peer_fp32 if name.startswith("fcos") and peer_fp32 else None
        row = {"run": name, "detcli": ips["detcli"], "peer": ips.get(peer), "vs_peer": run.get(f"speedup_vs_{peer}"),
               "vs_peer_fp32": vs_fp32, "tflops": run.get("achieved_tflops"), "mfu": run.get("mfu")}
        summary["training"].append(row)
        table.add_row(name, f"{row['detcli']:.1f}", _f(row["peer"], "{:.1f}"), _f(row["vs_peer"], "{:.2f}x"),
                      _f(vs_fp32, "{:.2f}x (target >= 3)"), _f(row["tflops"], "{:.1f}"),
                      _f(row["mfu"], "{:.1%} (target >= 30 %)", scale=1))
    console = Console(width=max(120, Console().width))
    console.print(table)

    memory = Table(title="gradient checkpointing (no frozen stages)")
    for col in ("head", "precision", "peak off (MiB)", "peak on (MiB)", "memory saved", "step time"):
        memory.add_column(col, justify="left" if col in ("head", "precision") else "right")
    for head in ("fcos", "yolox", "faster_rcnn"):
        run = load(folder, f"memory_{head}")
        for precision in ("fp32", "bf16") if run else ():
            rows = [r for r in run["rows"] if r["precision"] == precision and r["freeze_at"] == 0]
            off = next(r for r in rows if not r["grad_checkpointing"])
            on = next(r for r in rows if r["grad_checkpointing"])
            row = {"head": head, "precision": precision, "off_mib": off["peak_mib"], "on_mib": on["peak_mib"],
                   "saved": 1 - on["peak_mib"] / off["peak_mib"], "time_ratio": on["step_s"] / off["step_s"]}
            summary["memory"].append(row)
            memory.add_row(head, precision, f"{row['off_mib']:.0f}", f"{row['on_mib']:.0f}",
                           f"{row['saved']:.0%} (target >= 40 %)", f"{row['time_ratio']:.2f}x (target <= 1.25)")
    console.print(memory)

    data = load(folder, "data")
    if data:
        fastest = max((r["detcli"] for r in summary["training"] if r["run"].startswith("fcos")), default=None)
        loader = Table(title="training data loader against the fastest FCOS step rate")
        for col in ("workers", "loader img/s", "keeps up"):
            loader.add_column(col, justify="right")
        for r in data["rows"]:
            loader.add_row(str(r["workers"]), f"{r['img_per_s']:.1f}",
                           "-" if fastest is None else ("yes" if r["img_per_s"] >= fastest else f"no ({fastest:.1f})"))
        summary["data"] = {"rows": data["rows"], "fastest_step_img_per_s": fastest}
        console.print(loader)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written {folder / 'summary.json'}")


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else fmt.format(value * scale)


if __name__ == "__main__":
    main()
