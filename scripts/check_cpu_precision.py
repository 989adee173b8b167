"""Do detcli's CPU precision defaults keep the accuracy of fp32? On real photos, from random init and the
same seed, the same steps, image size and batch and no other trainer option:

- training: detcli trained twice, `trainer.precision=fp32` and `trainer.precision=bf16` (what `auto` would
  pick if it followed the CPU's bf16 instructions for training), each scored by its run's last evaluation;
- inference: each trained checkpoint evaluated again by `detcli eval` at `precision=fp32` and at the default
  (`precision=auto`: bf16 autocast on a CPU with avx512_bf16 / amx_bf16 instructions, fp32 elsewhere).

The table gives each run's training img/s and val mAP / AP50 and each evaluation's, then the differences from
fp32 in points with PASS where |mAP diff| <= 0.5 point (the issue's bar for a default that "keeps accuracy").
Each run is also scored on its own training tiles (fp32 eval): a precision that loses on val while it gains
there fits as well and generalises worse, rather than failing to optimise.
What it measured on this CPU decided detcli's `auto` (detcli/device.py resolve_precision): fp32 training
(bf16 training failed the bar) and bf16 inference (it passed). The JSON (--out) holds the runs, the
evaluations and the verdicts. Where the CPU has no bf16 instructions the inference default is fp32 and the
check says so (DETCLI_CPU_BF16=1 / 0 takes the CPU as having them or not).

The data: the NEON tree-crown tiles of scripts/bench_accuracy.py (the deepforest 2.1.0 wheel's four annotated
aerial images cut into 400 px tiles: train 133 tiles, 2281 boxes; val 13 tiles, 451 boxes), built and
cached by its functions (scripts/benchkit/datasets.py; runs/bench/cache/deepforest_trees_400, or `--cache`);
`--dataset pasted` runs on bench_accuracy's second set instead (3,000 training and 500 val images, 10 classes:
scripts/benchkit/pasted.py), whose val split moves less between seeds than the 13 val tiles; each run is its `run_detcli` (scripts/benchkit/runs.py: a `python -m detcli train` subprocess given only the
data, length, batch and size).

    python scripts/check_cpu_precision.py --experiment yolox_tiny --steps 1500 --threads 2   # ~17 min on 2 cores
    python scripts/check_cpu_precision.py --threads 2 --steps 400        # FCOS-R18: ~15 + 8 min
    python scripts/check_cpu_precision.py --head yolox --threads 2
    python scripts/check_cpu_precision.py --experiment yolox_tiny --steps 1500 --reuse   # re-score finished runs
    python scripts/check_cpu_precision.py --experiment yolox_tiny --steps 1500 --seed 0,1,2,3 --reuse  # the mean
    python scripts/check_cpu_precision.py --experiment yolox_cpu --dataset pasted --steps 1500 --seed 0,1 --workers 1
    python scripts/check_cpu_precision.py --synthetic --steps 2 --size 64 --batch 2   # a smoke run, no network

A yolox_tiny run of 1500 steps takes ~10 min in fp32 on 2 cores of this AMD EPYC (avx512_bf16, no AMX) and
reaches ~12 mAP; FCOS-R18 needs ~2.3 s a step and reaches a few points only by 400 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchkit.common import ROOT, report_rows
from benchkit.datasets import dataset, dataset_stats, tree_wheel
from benchkit.pasted import prepare_pasted
from benchkit.runs import run_detcli, train_img_per_s
from detcli.build import load_checkpoint_config
from detcli.device import resolve_precision

TOLERANCE = 0.5  # mAP points: |setting - fp32| within this keeps accuracy
RUNS = {"fp32": ["trainer.precision=fp32"], "bf16": ["trainer.precision=bf16"]}
EVALS = {"fp32": "precision=fp32", "default": "precision=auto"}  # `detcli eval` of each trained checkpoint
HEADS = {"fcos": [], "yolox": ["head=yolox"]}  # both on bench_accuracy's backbone=resnet18


def resolved_precision(run_dir: Path) -> str:
    """What the run computed in: its last checkpoint's meta["precision"] (written by the trainer)."""
    _, meta = load_checkpoint_config(str(run_dir / "checkpoints" / "last.pt"))
    return str(meta.get("precision", "unrecorded"))


def finished(run_dir: Path, steps: int, batch: int) -> dict | None:
    """A run of `steps` already in run_dir (--reuse), read back as run_detcli returns it; None otherwise."""
    log = run_dir / "eval_log.jsonl"
    if not log.is_file() or not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    metrics = json.loads(log.read_text().splitlines()[-1])
    if metrics["step"] != steps:
        return None
    return {"map": metrics["map"], "map_50": metrics["map_50"], "map_75": metrics["map_75"], "steps": steps,
            "train_img_per_s": train_img_per_s(run_dir / "train_log.jsonl", batch), "code": "reused",
            "run_dir": str(run_dir)}


def train(name: str, data: Path, args, seed: int) -> dict:
    suffix = f"_seed{seed}" if seed else ""
    run_dir = (args.workdir / f"{args.experiment or args.head}_{name}{suffix}").resolve()
    result = finished(run_dir, args.steps, args.batch) if args.reuse else None
    if result is None:
        model = [f"experiment={args.experiment}"] if args.experiment else HEADS[args.head]
        result = run_detcli(name, ROOT, data, args, run_dir, extra=(*model, *RUNS[name], f"seed={seed}"))
    return {**result, "precision": resolved_precision(run_dir)}


def evaluate(run: dict, setting: str, data: Path, args, split: str = "val") -> dict:
    """`detcli eval` of a run's last checkpoint at a precision setting, on the val split (what the verdicts
    compare) or on the training tiles (how well the run fits what it trained on)."""
    out = Path(run["run_dir"]) / f"eval_{setting.replace('=', '_')}{'_train' if split == 'train' else ''}"
    on_split = [f"data.val_ann={data / 'train.json'}", f"data.val_images={data / 'images'}"] if split == "train" else []
    cmd = [sys.executable, "-m", "detcli", "eval", f"checkpoint={run['run_dir']}/checkpoints/last.pt", setting,
           *on_split, "plots=false", "worst=0", f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"map": metrics["map"], "map_50": metrics["map_50"], "setting": setting,
            "precision": resolve_precision(setting.split("=")[1], torch.device("cpu"), inference=True)}


def verdict(fp32: dict, other: dict, what: str) -> dict:
    """`other` against fp32 in AP points (x 100), and whether it keeps accuracy."""
    diff = 100 * (other["map"] - fp32["map"])
    return {"what": what, "map_points": diff, "ap50_points": 100 * (other["map_50"] - fp32["map_50"]),
            "tolerance_points": TOLERANCE, "pass": abs(diff) <= TOLERANCE,
            "note": "both fp32 on this CPU" if other["precision"] == fp32["precision"] else ""}


def show(results: dict, evals: dict, verdicts: list[dict], title: str) -> None:
    rows = [[f"train {name} ({r['code']})", r["precision"], f"{r['train_img_per_s']:.2f}" if r["train_img_per_s"]
             else "-", f"{100 * r['map']:.2f}", f"{100 * r['map_50']:.2f}", f"{100 * r['train_map']:.2f}"]
            for name, r in results.items()]
    rows += [[f"  eval of {run}, {e['setting']}", e["precision"], "", f"{100 * e['map']:.2f}",
              f"{100 * e['map_50']:.2f}", ""] for run, by_setting in evals.items() for e in by_setting.values()]
    report_rows(title, ["run", "precision", "train img/s", "val mAP", "val AP50", "train-tiles mAP"], rows)
    for v in verdicts:
        print(f"{'PASS' if v['pass'] else 'FAIL'}: {v['what']}: mAP {v['map_points']:+.2f} point(s), "
              f"|diff| {'<=' if v['pass'] else '>'} {TOLERANCE}" + (f" ({v['note']})" if v["note"] else "")
              + (f"; on the training tiles {v['train_map_points']:+.2f}" if "train_map_points" in v else ""))


def check_seed(seed: int, data: Path, stats: dict, args) -> dict:
    """The fp32 / bf16 pair of one seed: its runs, their evaluations and the three verdicts, shown."""
    results = {name: train(name, data, args, seed) for name in RUNS}
    for r in results.values():  # the training tiles' mAP (fp32 eval): a val loss beside a train gain is generalisation
        r["train_map"] = evaluate(r, "precision=fp32", data, args, split="train")["map"]
    evals = {name: {k: evaluate(r, setting, data, args) for k, setting in EVALS.items()} for name, r in results.items()}
    speed = results["bf16"]["train_img_per_s"] / results["fp32"]["train_img_per_s"] \
        if results["bf16"]["train_img_per_s"] and results["fp32"]["train_img_per_s"] else None
    training = verdict(results["fp32"], results["bf16"], f"bf16 training ({speed or 0:.2f}x img/s) vs fp32 training")
    training["train_map_points"] = 100 * (results["bf16"]["train_map"] - results["fp32"]["train_map"])
    checks = [training,
              verdict(evals["fp32"]["fp32"], evals["fp32"]["default"], "inference default vs fp32, fp32-trained model"),
              verdict(evals["bf16"]["fp32"], evals["bf16"]["default"], "inference default vs fp32, bf16-trained model")]
    model = f"experiment={args.experiment}" if args.experiment else f"{args.head.upper()}-R18"
    show(results, evals, checks, f"{model} from scratch, seed {seed}, {args.steps} steps x {args.batch} x {args.size} "
                                 f"px, {'tree crowns' if args.dataset == 'trees' else 'pasted objects'} ({stats['val']['boxes']} val boxes), cpu, "
                                 f"{torch.get_num_threads()} thread(s)")
    return {"runs": results, "evals": evals, "verdicts": checks, "speed": speed}


def summary(per_seed: dict[int, dict]) -> list[dict]:
    """Each verdict over the seeds: the mean difference decides (one seed's run-to-run noise on a small val set
    is as large as the bar), with the spread shown."""
    out = []
    for i, first in enumerate(next(iter(per_seed.values()))["verdicts"]):
        diffs = [r["verdicts"][i]["map_points"] for r in per_seed.values()]
        mean = sum(diffs) / len(diffs)
        out.append({"what": first["what"].split(" (")[0], "seeds": list(per_seed), "map_points": diffs,
                    "mean_points": mean, "min_points": min(diffs), "max_points": max(diffs),
                    "tolerance_points": TOLERANCE, "pass": abs(mean) <= TOLERANCE})
    fits = [r["verdicts"][0]["train_map_points"] for r in per_seed.values()]
    out[0].update(train_map_points=fits, train_mean_points=sum(fits) / len(fits))
    speeds = [r["speed"] for r in per_seed.values() if r["speed"]]
    if speeds:
        out[0]["speed"] = sum(speeds) / len(speeds)
    fp32 = [100 * r["runs"]["fp32"]["map"] for r in per_seed.values()]
    print(f"\nover {len(per_seed)} seed(s) {list(per_seed)}: fp32 training reaches {min(fp32):.2f}-{max(fp32):.2f} mAP "
          f"(its own seed-to-seed spread {max(fp32) - min(fp32):.2f})")
    for v in out:
        print(f"{'PASS' if v['pass'] else 'FAIL'}: {v['what']}: mean mAP {v['mean_points']:+.2f} point(s) "
              f"(per seed {', '.join(f'{d:+.2f}' for d in v['map_points'])}), |mean| "
              f"{'<=' if v['pass'] else '>'} {TOLERANCE}")
    print(f"  {out[0]['what']} on the training tiles (fp32 eval): mean {out[0]['train_mean_points']:+.2f} point(s) "
          f"(per seed {', '.join(f'{d:+.2f}' for d in fits)})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of each run (~15 min on 2 cores)")
    p.add_argument("--size", type=int, default=256, help="train and eval image size (the tiles are square)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run")
    p.add_argument("--head", default="fcos", choices=list(HEADS))
    p.add_argument("--experiment", default=None, help="a preset instead of --head on resnet18 (e.g. yolox_tiny)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader workers (detcli data.num_workers; default: its auto, none when training on a CPU)")
    p.add_argument("--dataset", choices=("trees", "pasted"), default="trees",
                   help="the tree-crown tiles (13 val tiles) or bench_accuracy's pasted set (500 val images)")
    p.add_argument("--tile", type=int, default=400, help="tile side in source pixels")
    p.add_argument("--wheel", type=Path, default=None, help="the deepforest 2.1.0 wheel (else pip download)")
    p.add_argument("--synthetic", action="store_true", help="a generated stand-in for the wheel (smoke test)")
    p.add_argument("--cache", type=Path, default=Path("runs/bench/cache"))
    p.add_argument("--workdir", type=Path, default=Path("runs/bench/cpu_precision"), help="the run folders")
    p.add_argument("--seed", default="0", help="detcli's seed (init, data order) of both runs; a comma list "
                                               "(0,1,2,3) checks a pair per seed and decides on the mean difference")
    p.add_argument("--reuse", action="store_true", help="re-score runs of the same length already in --workdir")
    p.add_argument("--out", default="runs/bench/cpu_precision.json")
    args = p.parse_args()
    args.device, args.wall_clock = "cpu", None  # what benchkit.runs.run_detcli reads besides these
    seeds = [int(s) for s in str(args.seed).split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache.resolve()
    data = dataset(args, cache) if args.dataset == "trees" else \
        prepare_pasted(cache, tree_wheel(args, cache)[0], synthetic=args.synthetic)
    stats = dataset_stats(data)
    per_seed = {seed: check_seed(seed, data, stats, args) for seed in seeds}
    recorded = {**vars(args), "seed": seeds if len(seeds) > 1 else seeds[0]}
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in recorded.items()},
              "data": {"path": str(data), **stats}}
    if len(seeds) == 1:
        result.update({k: per_seed[seeds[0]][k] for k in ("runs", "evals", "verdicts")})
    else:
        result["seeds"] = {str(seed): {k: r[k] for k in ("runs", "evals", "verdicts")} for seed, r in per_seed.items()}
        result["summary"] = summary(per_seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
