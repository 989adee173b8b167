"""Accuracy at a fixed budget: detectors trained from random init on real aerial photos (tree crowns in
NEON RGB tiles, shipped inside the `deepforest` wheel), all scored on the same held-out split by the same
COCO mAP. The runs (`--runs`, a comma list; default all five):

- before: detcli FCOS-R18 with its defaults before this issue (commit 170e363, run from a git worktree)
- after: detcli FCOS-R18 with its current defaults
- torchvision: torchvision's FCOS-R18 with its reference recipe
- yolox: detcli `head=yolox` with its defaults (its PAFPN neck and loss) on the same resnet18
- ultralytics: ultralytics' YOLOv8n from yolov8n.yaml (random init, no weights file) with its defaults
- yolox_nano, yolox_tiny, fcos_lite: detcli's small presets (`experiment=<name>`, their own backbones)

`--wall-clock MINUTES` trains each run for that long instead of a number of steps: detcli runs get
`trainer.time_limit` (the schedule laid over the steps that fit; one evaluation, at the end, inside the
limit) and ultralytics its `time=` (it refits its epochs and schedule after the first epoch); the default
runs are then the three presets and ultralytics, and the table shows the mAP each reached and its img/s.

Each tool trains with its own defaults: detcli (before, after, yolox) is given only the data, the image
size, the batch and the number of steps (plus the device, data workers and one evaluation at the end;
the same overrides for all three, backbone=resnet18 included, and `head=yolox` for yolox); torchvision
gets its reference recipe (SGD momentum 0.9, weight decay 1e-4, lr 0.01, linear warmup over 10 % of the
steps then cosine to 0, horizontal flip 0.5, its own internal resize) and the same images, image size,
batch and steps. ultralytics trains through `YOLO("yolov8n.yaml").train(...)` given only the same data
(a YOLO-format view of the tiles: hard links, or copies across file systems, label files and a
data.yaml, written to <cache>/<dataset>_yolo; the COCO files are only read), image size, batch, device
and workers; all else is its own default (optimizer auto, warmup, mosaic, close_mosaic, EMA, a nominal
batch of 64 reached by gradient accumulation), except what keeps it offline and alike: pretrained=False,
plots=False, its AMP self-test skipped (it downloads yolo26n.pt; AMP stays its default: on a GPU only),
and val=False (it validates once, at the end, as detcli does). It counts in epochs: epochs =
ceil(steps / ceil(train tiles / batch)), so it runs at least as many batches as detcli (1207 for 1200
at 133 tiles and batch 8); its accumulation makes that fewer optimizer updates (the JSON records both).
On CPU it loads data in the main process (it sets workers=0 there), and its thread count is set to the
other runs' (--threads, else torch's default). Its last.pt (EMA weights) then predicts on the val tiles
at its validation defaults (conf 0.001, iou 0.7, max_det 300) at the same image size.

torchvision's and ultralytics' detections are scored with the metric detcli's evaluator uses
(COCO's protocol through faster-coco-eval, detcli/evaluation/coco.py) on the same gt, crowd boxes included.

`--dataset pasted` trains and scores on the second set instead, one of ordinary size (3,000 train and 500 val
images of 256 px, 10 classes: objects cut from scikit-image's photographs pasted on real backgrounds,
scripts/benchkit/pasted.py), where more steps keep paying as on most users' sets.

The data (the default, --dataset trees): the four annotated images of deepforest 2.1.0 (`pip download --no-deps deepforest==2.1.0`;
deepforest itself is never imported), cut into square tiles (400 px). Held out by image: train is
2019_YELL_2_528000_4978000_image_crop2 (2299x2472, 574 trees) + OSBS_029 (400x400, 61), tiled with half
a tile of overlap; val is 2019_YELL_2_541000_4977000_image_crop (1249x1035, 279; the same site, another
image) + SOAP_061 (400x400, 37; a site never seen in training), tiled with a stride of one tile (the
tiles evenly spread so that the last is flush with the edge: a little overlap). A box cut by a tile edge
that keeps less than half of its area is dropped in train and marked iscrowd in val (neither reward nor
penalty). Tiles without a tree are kept as negatives up to 10 % of the tiles with trees. SOAP's
Alive/Dead labels are one class, tree. At 400 px: train 133 tiles (4 without trees), 2281 boxes; val
13 tiles, 451 boxes + 67 crowd. The set is written once, atomically and byte-for-byte reproducibly, to
runs/bench/cache/deepforest_trees_<tile>/ and checked with `detcli data check`.

    python scripts/bench_accuracy.py                     # the full benchmark: ~1.5 h per run on 2 CPU cores
    python scripts/bench_accuracy.py --runs yolox,ultralytics    # YOLOX against YOLOv8n only
    python scripts/bench_accuracy.py --wall-clock 30 --size 256   # the presets and YOLOv8n, 30 minutes each
    python scripts/bench_accuracy.py --wall-clock 30 --size 256 --dataset pasted   # the same on the second set
    python scripts/bench_accuracy.py --device cuda --threads 8
    python scripts/bench_accuracy.py --steps 4 --batch 2 --size 128                 # a smoke run
    python scripts/bench_accuracy.py --synthetic --steps 2 --batch 2 --size 64     # no network: a fake wheel

ultralytics is the optional `bench` extra (pip install -e .[bench]); without it its run is skipped.

On a CPU shared with other jobs, --threads 1 is steadier (and here faster) than one thread per core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchkit.common import ROOT
from benchkit.datasets import dataset, dataset_stats, tree_wheel
from benchkit.pasted import COUNTS, prepare_pasted
from benchkit.peers import run_torchvision, run_ultralytics
from benchkit.report import compare, show
from benchkit.runs import PRESETS, RUNS, before_tree, run_detcli

BEFORE = "170e363"  # detcli before this changes
COMPARISONS = (("after", "before"), ("after", "torchvision"), ("yolox", "ultralytics"), ("yolox", "after"),
               *((p, "ultralytics") for p in PRESETS))
WALL_CLOCK_RUNS = (*PRESETS, "ultralytics")  # --wall-clock without --runs


def run_one(name: str, data: Path, args, cache: Path) -> dict | None:
    """One run's result; None where it was skipped (ultralytics not installed)."""
    run_dir = (args.workdir / name).resolve()
    if name == "torchvision":
        return run_torchvision(data, args)
    if name == "ultralytics":
        return run_ultralytics(data, args, cache, run_dir)
    tree = before_tree(args.before_tree, cache, args.before) if name == "before" else ROOT
    return run_detcli(name, tree, data, args, run_dir, extra=(f"seed={args.seed}",) if args.seed else ())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--wall-clock", type=float, default=None, metavar="MINUTES",
                   help="train each run for this long instead of --steps (detcli trainer.time_limit, "
                        f"ultralytics time=); default runs then: {','.join(WALL_CLOCK_RUNS)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=320, help="train and eval image size (the tiles are square)")
    p.add_argument("--tile", type=int, default=400, help="tile side in source pixels")
    p.add_argument("--runs", default=None, help=f"comma list of {', '.join(RUNS)} (default: the first five)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run")
    p.add_argument("--seed", type=int, default=0,
                   help="every run's seed (detcli seed=, ultralytics seed=): a second seed for the runs' spread")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader workers (detcli data.num_workers; default: its auto, none when training on a CPU)")
    p.add_argument("--dataset", choices=("trees", "pasted"), default="trees",
                   help="trees: the deepforest tiles; pasted: objects from skimage's photos on real backgrounds "
                        "(benchkit/pasted.py; use --size 256, its image size)")
    p.add_argument("--pasted-images", type=int, nargs=2, default=[COUNTS["train"], COUNTS["val"]],
                   metavar=("TRAIN", "VAL"), help="--dataset pasted: the number of train and val images")
    p.add_argument("--wheel", type=Path, default=None, help="the deepforest 2.1.0 wheel (else pip download)")
    p.add_argument("--synthetic", action="store_true", help="a generated stand-in for the wheel (smoke test)")
    p.add_argument("--before", default=BEFORE, help="the detcli commit of run 'before'")
    p.add_argument("--before-tree", type=Path, default=None,
                   help="a detcli checkout run as 'before' (default: a git worktree of --before in --cache)")
    p.add_argument("--cache", type=Path, default=Path("runs/bench/cache"))
    p.add_argument("--workdir", type=Path, default=Path("runs/bench/accuracy"), help="the detcli run folders")
    p.add_argument("--out", default="runs/bench/accuracy.json")
    args = p.parse_args()
    default_runs = WALL_CLOCK_RUNS if args.wall_clock else RUNS[:5]
    runs = [r.strip() for r in (args.runs or ",".join(default_runs)).split(",") if r.strip()]
    if unknown := set(runs) - set(RUNS):
        p.error(f"--runs: unknown {sorted(unknown)}; choose from {RUNS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache.resolve()
    if args.dataset == "trees":
        data = dataset(args, cache)
    else:
        data = prepare_pasted(cache, tree_wheel(args, cache)[0], *args.pasted_images, synthetic=args.synthetic)
    stats = dataset_stats(data)
    print(f"data {data}: " + "; ".join(f"{s} {v['tiles']} images ({v['negative_tiles']} without objects), "
                                       f"{v['boxes']} boxes + {v['crowd_boxes']} crowd"
                                       for s, v in stats.items()))
    results = {name: r for name in runs if (r := run_one(name, data, args, cache)) is not None}
    comparisons = {f"{a} vs {b}": compare(results[a], results[b]) for a, b in COMPARISONS
                   if a in results and b in results}
    length = f"{args.wall_clock:g} minutes each" if args.wall_clock else f"{args.steps} steps"
    what = "tree crowns" if args.dataset == "trees" else "pasted objects"
    show(results, comparisons, f"from scratch, {length} x {args.batch} x {args.size} px, "
                               f"{what} ({stats['val']['tiles']} val images, {stats['val']['boxes']} boxes), {args.device}")
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "data": {"path": str(data), "source": json.loads((data / "source.json").read_text()), **stats},
              "runs": results, "comparisons": comparisons}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
