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

The data: the four annotated images of deepforest 2.1.0 (`pip download --no-deps deepforest==2.1.0`;
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
    python scripts/bench_accuracy.py --device cuda --threads 8
    python scripts/bench_accuracy.py --steps 4 --batch 2 --size 128                 # a smoke run
    python scripts/bench_accuracy.py --synthetic --steps 2 --batch 2 --size 64     # no network: a fake wheel

ultralytics is the optional `bench` extra (pip install -e .[bench]); without it its run is skipped.

On a CPU shared with other jobs, --threads 1 is steadier (and here faster) than one thread per core.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_ultralytics, report_rows
from bench_train import torchvision_fcos

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "170e363"  # detcli before this changes
WHEEL = "deepforest==2.1.0"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"  # of its py3-none-any wheel
MEMBERS = "deepforest/data/"
SPLITS = {  # held out by image (see the docstring)
    "train": ["2019_YELL_2_528000_4978000_image_crop2", "OSBS_029"],
    "val": ["2019_YELL_2_541000_4977000_image_crop", "SOAP_061"],
}
MIN_VISIBLE = 0.5  # a box cut by a tile edge must keep this fraction of its area (else dropped / iscrowd)
NEGATIVES = 0.1  # tiles without a tree kept, at most this fraction of the tiles with trees
PRESETS = ("yolox_nano", "yolox_tiny", "yolox_r18", "fcos_lite")  # experiment=<name>: their own backbones
RUNS = ("before", "after", "torchvision", "yolox", "ultralytics", *PRESETS)
# the detcli runs that differ from the current defaults
EXTRA_OVERRIDES = {"yolox": ["head=yolox"], **{p: [f"experiment={p}"] for p in PRESETS}}
COMPARISONS = (("after", "before"), ("after", "torchvision"), ("yolox", "ultralytics"), ("yolox", "after"),
               *((p, "ultralytics") for p in PRESETS))
WALL_CLOCK_RUNS = (*PRESETS, "ultralytics")  # --wall-clock without --runs


# ---- the data set --------------------------------------------------------------------------------
def fetch_wheel(cache: Path) -> Path:
    """The deepforest wheel, downloaded once into `cache` by pip (no dependencies)."""
    found = sorted(cache.glob("deepforest-2.1.0-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SystemExit(f"`{' '.join(cmd)}` failed: give the wheel with --wheel PATH")
        found = sorted(cache.glob("deepforest-2.1.0-*.whl"))
    return found[0]


def read_wheel(wheel: Path) -> dict[str, tuple[bytes, bytes]]:
    """(PNG, Pascal VOC XML) of each image the splits name, read from the wheel; nothing else is unpacked."""
    stems = [stem for split in SPLITS.values() for stem in split]
    with zipfile.ZipFile(wheel) as z:
        wanted = {f"{MEMBERS}{s}{ext}" for s in stems for ext in (".png", ".xml")}
        missing = sorted(wanted - set(z.namelist()))
        if missing:
            raise SystemExit(f"'{wheel}' lacks {missing}: not the deepforest 2.1.0 wheel?")
        return {s: (z.read(f"{MEMBERS}{s}.png"), z.read(f"{MEMBERS}{s}.xml")) for s in stems}


def voc_boxes(xml: bytes) -> np.ndarray:
    """(n, 4) x1y1x2y2 of every object: all are trees (SOAP's Alive / Dead included)."""
    import xml.etree.ElementTree as ET

    objects = ET.fromstring(xml).iter("object")
    boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
             for o in objects]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts that cover [0, length), evenly spread, the last one flush with the end."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def cut_tiles(image, boxes: np.ndarray, tile: int, stride: int, crowd: bool):
    """Yields (name suffix, crop, boxes (k, 4) in tile pixels, iscrowd (k,)) per tile, in scan order."""
    W, H = image.size
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (n,)
    for y in tile_origins(H, tile, stride):
        for x in tile_origins(W, tile, stride):
            w, h = min(tile, W), min(tile, H)
            clipped = np.clip(boxes - [x, y, x, y], 0, [w, h, w, h])  # (n, 4)
            cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]  # (n,)
            inside = (cw >= 1) & (ch >= 1)
            whole = inside & (cw * ch >= MIN_VISIBLE * area)
            part = inside & ~whole & crowd  # val: ignored by the metric rather than dropped
            keep = whole | part
            yield f"_x{x:04d}_y{y:04d}", image.crop((x, y, x + w, y + h)), clipped[keep], part[keep]


def few_negatives(tiles: list[tuple]) -> list[tuple]:
    """The tiles with trees, and evenly spaced tiles without one up to NEGATIVES of their number."""
    empty = [t for t in tiles if not (~t[3]).any()]
    allowed = int(NEGATIVES * (len(tiles) - len(empty)))
    kept = {id(t) for t in empty[:: max(1, math.ceil(len(empty) / allowed))][:allowed]} if allowed else set()
    return [t for t in tiles if (~t[3]).any() or id(t) in kept]


def build_split(sources: dict, split: str, tile: int, images: Path) -> dict:
    """Tiles of the split's images written as PNG into `images`; the COCO instances dict."""
    from PIL import Image

    stride = tile // 2 if split == "train" else tile  # train: more positions; val: each tree scored ~once
    tiles = []
    for stem in SPLITS[split]:
        png, xml = sources[stem]
        image = Image.open(io.BytesIO(png)).convert("RGB")
        cuts = cut_tiles(image, voc_boxes(xml), tile, stride, crowd=split == "val")
        tiles += [(stem + suffix, *rest) for suffix, *rest in cuts]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tree"}]}
    for image_id, (name, crop, boxes, crowd) in enumerate(few_negatives(tiles), 1):
        crop.save(images / f"{name}.png", format="PNG")
        coco["images"].append({"id": image_id, "file_name": f"{name}.png", "width": crop.width,
                               "height": crop.height})
        for (x1, y1, x2, y2), c in zip(boxes.tolist(), crowd.tolist()):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": int(c),
            })
    return coco


def prepare_dataset(wheel: Path, sha256: str, out: Path, tile: int) -> Path:
    """The tiled COCO set in `out` (train.json, val.json, images/), built in a temporary folder, checked
    by `detcli data check` and renamed into place; kept while the wheel and the parameters are the same."""
    params = json.loads(json.dumps({"wheel": wheel.name, "sha256": sha256, "tile": tile, "splits": SPLITS,
                                    "min_visible": MIN_VISIBLE, "negatives": NEGATIVES}))
    if (out / "source.json").is_file() and json.loads((out / "source.json").read_text()) == params:
        return out
    print(f"tiling {wheel.name} into {out}")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    sources = read_wheel(wheel)
    for split in SPLITS:
        coco = build_split(sources, split, tile, tmp / "images")
        (tmp / f"{split}.json").write_text(json.dumps(coco) + "\n")
    check_dataset(tmp)
    (tmp / "source.json").write_text(json.dumps(params, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def data_overrides(data: Path) -> list[str]:
    return ["data=coco", f"data.train_ann={data / 'train.json'}", f"data.train_images={data / 'images'}",
            f"data.val_ann={data / 'val.json'}", f"data.val_images={data / 'images'}"]


def check_dataset(data: Path) -> None:
    """`detcli data check` on the set (exit 1 when it finds a defect)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "detcli", "data", "check", *data_overrides(data),
                               f"hydra.run.dir={tmp}"], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"detcli data check failed on {data}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def dataset_stats(data: Path) -> dict:
    out = {}
    for split in SPLITS:
        coco = json.loads((data / f"{split}.json").read_text())
        crowd = sum(a["iscrowd"] for a in coco["annotations"])
        with_trees = {a["image_id"] for a in coco["annotations"] if not a["iscrowd"]}
        out[split] = {"tiles": len(coco["images"]), "negative_tiles": len(coco["images"]) - len(with_trees),
                      "boxes": len(coco["annotations"]) - crowd, "crowd_boxes": crowd}
    return out


def synthetic_wheel(path: Path, tile: int) -> Path:
    """A stand-in for the deepforest wheel with the same member names (no network): green crowns on
    brown ground, about 12 per tile, the images shaped like the real ones but smaller."""
    from PIL import Image, ImageDraw

    shapes = {SPLITS["train"][0]: (1.6, 1.7), SPLITS["train"][1]: (1.0, 1.0),  # (width, height) in tiles
              SPLITS["val"][0]: (1.25, 1.05), SPLITS["val"][1]: (1.0, 1.0)}
    rng = np.random.default_rng(0)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w") as z:
        for stem, (fw, fh) in shapes.items():
            W, H, n = round(fw * tile), round(fh * tile), round(12 * fw * fh)
            wh = rng.uniform(0.06, 0.12, (n, 2)) * tile  # (n, 2)
            xy = rng.uniform(0, 1, (n, 2)) * ([W, H] - wh)  # (n, 2)
            boxes = np.concatenate([xy, xy + wh], 1).round()  # (n, 4)
            image = Image.new("RGB", (W, H), (110, 90, 60))
            draw = ImageDraw.Draw(image)
            for b in boxes.tolist():
                draw.ellipse(b, fill=(40, 110, 40))
            png = io.BytesIO()
            image.save(png, format="PNG")
            objects = "".join(f"<object><name>Tree</name><bndbox><xmin>{x1:.0f}</xmin><ymin>{y1:.0f}</ymin>"
                              f"<xmax>{x2:.0f}</xmax><ymax>{y2:.0f}</ymax></bndbox></object>"
                              for x1, y1, x2, y2 in boxes)
            xml = f"<annotation><size><width>{W}</width><height>{H}</height></size>{objects}</annotation>"
            for name, content in ((f"{stem}.png", png.getvalue()), (f"{stem}.xml", xml.encode())):
                z.writestr(zipfile.ZipInfo(MEMBERS + name, (2020, 1, 1, 0, 0, 0)), content)
    tmp.replace(path)
    return path


# ---- the runs --------------------------------------------------------------------------------------
def before_tree(path: Path | None, cache: Path, commit: str) -> Path:
    """A checkout of detcli at `commit`: the given folder, else a git worktree made once in the cache."""
    if path is not None:
        return path.resolve()
    path = (cache / f"detcli_{commit}").resolve()
    if not (path / "detcli").is_dir():  # --force: the folder may be gone while git still lists it
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(path), commit],
                       check=True)
    return path


def revision(tree: Path) -> str:
    """The tree's commit, with +dirty when tracked files differ from it."""
    def git(*a: str) -> str:
        proc = subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def train_img_per_s(train_log: Path, batch: int) -> float | None:
    """Training images/s over the run, from train_log.jsonl (each line covers the steps since the last)."""
    if not train_log.is_file():
        return None
    images = seconds = last = 0
    for line in train_log.read_text().splitlines():
        r = json.loads(line)
        n = (r["step"] - last) * batch
        images, seconds, last = images + n, seconds + n / r["img_per_s"], r["step"]
    return images / seconds if seconds else None


def run_detcli(name: str, tree: Path, data: Path, args, run_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    """`python -m detcli train` from `tree` (first on the path, so its own code and configs are used)
    with only the data, the length and the batch given (and the run's head, EXTRA_OVERRIDES, and `extra`,
    e.g. scripts/check_cpu_precision.py's trainer.precision=fp32): everything else is that version's default."""
    shutil.rmtree(run_dir, ignore_errors=True)  # the logs append: a stale run would be read back
    # the length: the steps, or (--wall-clock) the time limit with one evaluation, at its end
    length = ([f"trainer.time_limit={args.wall_clock:g}m", f"trainer.eval_interval={10**9}"] if args.wall_clock
              else [f"trainer.max_steps={args.steps}", f"trainer.eval_interval={args.steps}"])
    overrides = [*data_overrides(data), f"data.image_size={args.size}", f"data.batch_size={args.batch}",
                 f"data.num_workers={args.workers}",
                 *([] if name in PRESETS or any(e.startswith("experiment=") for e in extra) else ["backbone=resnet18"]),
                 *length, f"trainer.device={args.device}", *EXTRA_OVERRIDES.get(name, []), *extra]
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    print(f"--- {name}: detcli {revision(tree)} in {tree}")
    cmd = [sys.executable, "-m", "detcli", "train", *overrides, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, check=False)  # cwd first on sys.path: this tree's detcli
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: detcli train exited {proc.returncode} (run folder {run_dir})")
    metrics = json.loads((run_dir / "eval_log.jsonl").read_text().splitlines()[-1])
    return {"map": metrics["map"], "map_50": metrics["map_50"], "map_75": metrics["map_75"], "wall_s": wall,
            "train_img_per_s": train_img_per_s(run_dir / "train_log.jsonl", args.batch),
            "steps": metrics["step"], "code": f"detcli {revision(tree)}", "run_dir": str(run_dir),
            "overrides": overrides}


def read_split(data: Path, split: str) -> list[dict]:
    """Per tile: the image uint8 (3, H, W) and its gt as detcli's evaluator receives it (original
    pixels, contiguous labels, iscrowd, area)."""
    from torchvision.io import ImageReadMode, decode_image

    coco = json.loads((data / f"{split}.json").read_text())
    label = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = []
    for img in coco["images"]:
        a = anns.get(img["id"], [])
        xywh = torch.tensor([x["bbox"] for x in a], dtype=torch.float32).reshape(-1, 4)  # (n, 4)
        gt = {"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),  # (n, 4) x1y1x2y2
              "labels": torch.tensor([label[x["category_id"]] for x in a], dtype=torch.long),  # (n,)
              "iscrowd": torch.tensor([x["iscrowd"] for x in a], dtype=torch.long),  # (n,)
              "area": torch.tensor([x["area"] for x in a], dtype=torch.float32)}  # (n,)
        image = decode_image(str(data / "images" / img["file_name"]), mode=ImageReadMode.RGB)
        out.append({"image": image, "gt": gt})
    return out


def reference_lr(step: int, total: int) -> float:
    """torchvision's reference recipe: linear warmup from 0.001 over 10 % of the steps, then cosine to 0."""
    warmup = max(1, round(0.1 * total))
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_batches(samples: list[dict], batch: int, g: torch.Generator):
    """(images, targets) forever: a new order each epoch, the last partial batch dropped, each image
    flipped horizontally with probability 0.5 (the reference's RandomHorizontalFlip)."""
    if len(samples) < batch:
        raise SystemExit(f"--batch {batch} is larger than the training set ({len(samples)} tiles)")
    while True:
        order = torch.randperm(len(samples), generator=g).tolist()
        for i in range(0, len(order) - batch + 1, batch):
            flips = (torch.rand(batch, generator=g) < 0.5).tolist()
            yield zip(*[flipped(samples[j], flip) for j, flip in zip(order[i:i + batch], flips)])


def flipped(sample: dict, flip: bool) -> tuple:
    gt, image = sample["gt"], sample["image"]
    keep = gt["iscrowd"] == 0
    boxes, W = gt["boxes"][keep], image.shape[-1]  # (n, 4)
    if flip:
        image = image.flip(-1)
        boxes = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)  # (n, 4)
    return image, {"boxes": boxes, "labels": gt["labels"][keep]}


def fit_torchvision(model, samples: list[dict], args, device: torch.device) -> int | None:
    """The reference training loop; the step at which the loss went non-finite, else None."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: reference_lr(step, args.steps))
    batches = train_batches(samples, args.batch, torch.Generator().manual_seed(0))
    model.train()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        images, targets = next(batches)
        images = [im.to(device).float() / 255 for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss = sum(model(images, targets).values())
        if not torch.isfinite(loss):
            return step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == args.steps:
            ips = step * args.batch / (time.perf_counter() - t0)
            print(f"torchvision step {step}/{args.steps}  loss {loss.item():.3f}  "
                  f"lr {sched.get_last_lr()[0]:.5f}  {ips:.2f} img/s", flush=True)
    return None


def coco_map(pairs) -> dict[str, float]:
    """(detections, gt) per image, boxes x1y1x2y2 in tile pixels, scored as detcli's evaluator scores
    (detcli/evaluation/coco.py: COCO's protocol through faster-coco-eval), crowd gt ignored."""
    from detcli.evaluation.evaluator import METRIC_KEYS, score

    stats = score([{k: v.cpu() for k, v in d.items()} for d, _ in pairs], [gt for _, gt in pairs]).stats
    return {k: stats[k] for k in METRIC_KEYS}


@torch.no_grad()
def evaluate_torchvision(model, samples: list[dict], device: torch.device, batch: int) -> dict[str, float]:
    """torchvision maps its detections back to tile pixels itself."""
    model.eval()

    def pairs():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            dets = model([s["image"].to(device).float() / 255 for s in chunk])
            yield from zip(dets, [s["gt"] for s in chunk])

    return coco_map(pairs())


def run_torchvision(data: Path, args) -> dict:
    import torchvision

    print(f"--- torchvision: FCOS {torchvision.__version__}, reference recipe")
    device = torch.device(args.device)
    train, val = read_split(data, "train"), read_split(data, "val")
    num_classes = len(json.loads((data / "train.json").read_text())["categories"])
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = torchvision_fcos("resnet18", args.size, num_classes).to(device)
    t_train = time.perf_counter()
    diverged = fit_torchvision(model, train, args, device)
    train_s = time.perf_counter() - t_train
    if diverged:  # nothing to evaluate: scored as zero
        metrics = {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    else:
        metrics = evaluate_torchvision(model, val, device, args.batch)
    return {"map": metrics["map"], "map_50": metrics["map_50"], "map_75": metrics["map_75"],
            "wall_s": time.perf_counter() - t0,
            "train_img_per_s": None if diverged else args.batch * args.steps / train_s,
            "code": f"torchvision {torchvision.__version__.split('+')[0]}", "diverged_at_step": diverged}


# ---- ultralytics -----------------------------------------------------------------------------------
def yolo_view(data: Path, out: Path) -> Path:
    """A YOLO-format view of the COCO set for ultralytics, in `out`: images/<split>/ hard links to the
    tiles (copies where a link is impossible), labels/<split>/<stem>.txt (class cx cy w h, normalised;
    crowd boxes left out, as ultralytics has no crowd), data.yaml. Built in a temporary folder and
    renamed into place; kept while the COCO set's source.json is the same. The COCO files are only read."""
    import yaml

    source = (data / "source.json").read_text()
    if (out / "source.json").is_file() and (out / "source.json").read_text() == source:
        return out
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in SPLITS:
        coco = json.loads((data / f"{split}.json").read_text())
        write_yolo_split(coco, data / "images", tmp / "images" / split, tmp / "labels" / split)
    names = {i: c["name"] for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    spec = {"path": str(out.resolve()), "train": "images/train", "val": "images/val", "names": names}
    (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp / "source.json").write_text(source)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def write_yolo_split(coco: dict, images: Path, image_dir: Path, label_dir: Path) -> None:
    label = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a["iscrowd"]:
            anns.setdefault(a["image_id"], []).append(a)
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for img in coco["images"]:
        name, W, H = Path(img["file_name"]).name, img["width"], img["height"]
        try:
            os.link(images / img["file_name"], image_dir / name)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(images / img["file_name"], image_dir / name)
        lines = [f"{label[a['category_id']]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} "
                 f"{h / H:.6f}" for a in anns.get(img["id"], []) for x, y, w, h in [a["bbox"]]]
        (label_dir / Path(name).with_suffix(".txt")).write_text("".join(f"{line}\n" for line in lines))


def ultralytics_epochs(steps: int, n_train: int, batch: int) -> int:
    """Epochs whose batches (ceil(n_train / batch) each, the last one partial) cover `steps`."""
    return math.ceil(steps / math.ceil(n_train / batch))


def ultralytics_device(device: str) -> str:
    """detcli's device string as ultralytics takes it: cpu, cuda -> 0, cuda:N -> N."""
    if device.startswith("cuda"):
        return device.partition(":")[2] or "0"
    return device


class TrainingRecord:
    """ultralytics callbacks: the thread count (its select_device resets it to its own), the seconds
    spent in training epochs, the optimizer updates and the optimizer it chose."""

    def __init__(self, threads: int):
        self.threads, self.train_s, self.updates, self.t0 = threads, 0.0, 0, 0.0
        self.optimizer: dict = {}
        self.epochs = 0  # epochs trained (under time=, fewer than asked)

    def attach(self, model) -> None:
        model.add_callback("on_pretrain_routine_start", lambda trainer: torch.set_num_threads(self.threads))
        model.add_callback("on_train_start", self.count_updates)
        model.add_callback("on_train_epoch_start", self.epoch_start)
        model.add_callback("on_train_epoch_end", self.epoch_end)

    def count_updates(self, trainer) -> None:
        step = trainer.optimizer_step

        def counted():
            self.updates += 1
            step()

        trainer.optimizer_step = counted
        group = trainer.optimizer.param_groups[0]
        self.optimizer = {"name": type(trainer.optimizer).__name__, "nominal_batch": trainer.args.nbs,
                          "lr0": group.get("initial_lr", group["lr"]), "accumulate": trainer.accumulate}

    def epoch_start(self, trainer) -> None:
        self.t0 = time.perf_counter()

    def epoch_end(self, trainer) -> None:
        self.train_s += time.perf_counter() - self.t0
        self.epochs += 1


def predict_ultralytics(weights: Path, data: Path, view: Path, args) -> list[dict]:
    """Detections of each val tile (in val.json's order, as read_split) at ultralytics' validation
    defaults, mapped back to tile pixels by ultralytics. One class, so predict's single-label NMS is its
    validator's multi-label one."""
    from ultralytics import YOLO

    coco = json.loads((data / "val.json").read_text())
    paths = [str(view / "images" / "val" / Path(img["file_name"]).name) for img in coco["images"]]
    results = YOLO(weights).predict(paths, imgsz=args.size, conf=0.001, iou=0.7, max_det=300,
                                    batch=args.batch, device=ultralytics_device(args.device), stream=True,
                                    verbose=False)
    return [{"boxes": r.boxes.xyxy.float(), "scores": r.boxes.conf.float(), "labels": r.boxes.cls.long()}
            for r in results]


def train_ultralytics(view: Path, epochs: int, args, run_dir: Path, record: TrainingRecord) -> Path:
    """YOLOv8n from yolov8n.yaml trained with ultralytics' defaults; its last.pt (EMA weights). Under
    --wall-clock, its own time= (hours) sets the length: it refits its epochs and schedule to the time."""
    import ultralytics.engine.trainer
    from ultralytics import YOLO

    ultralytics.engine.trainer.check_amp = lambda model: True  # its self-test downloads yolo26n.pt
    model = YOLO("yolov8n.yaml")  # random init
    record.attach(model)
    model.train(data=str(view / "data.yaml"), epochs=epochs, imgsz=args.size, batch=args.batch,
                device=ultralytics_device(args.device), workers=args.workers, pretrained=False, plots=False,
                amp=args.device.startswith("cuda"), val=False, project=str(run_dir.parent), name=run_dir.name,
                exist_ok=True, **({"time": args.wall_clock / 60} if args.wall_clock else {}))
    return run_dir / "weights" / "last.pt"


def run_ultralytics(data: Path, args, cache: Path, run_dir: Path) -> dict | None:
    ultralytics = load_ultralytics(cache)
    if ultralytics is None:
        return None
    print(f"--- ultralytics: YOLOv8n {ultralytics.__version__}, its defaults")
    n_train = len(json.loads((data / "train.json").read_text())["images"])
    epochs = ultralytics_epochs(args.steps, n_train, args.batch)
    view = yolo_view(data, cache / f"{data.name}_yolo")
    shutil.rmtree(run_dir, ignore_errors=True)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    record = TrainingRecord(threads)
    t0 = time.perf_counter()
    try:
        weights = train_ultralytics(view, epochs, args, run_dir, record)
        dets = predict_ultralytics(weights, data, view, args)
    finally:  # it sets these process-wide; the runs after it get them back
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    metrics = coco_map(zip(dets, [s["gt"] for s in read_split(data, "val")], strict=True))
    epochs = record.epochs or epochs
    return {"map": metrics["map"], "map_50": metrics["map_50"], "map_75": metrics["map_75"],
            "wall_s": time.perf_counter() - t0,
            "train_img_per_s": epochs * n_train / record.train_s if record.train_s else None,
            "code": f"ultralytics {ultralytics.__version__}", "run_dir": str(run_dir), "epochs": epochs,
            "batches": epochs * math.ceil(n_train / args.batch), "optimizer_updates": record.updates,
            "optimizer": record.optimizer}


# ---- the report ------------------------------------------------------------------------------------
def compare(a: dict, b: dict) -> dict:
    """a against b: AP differences in points (x 100), mAP and wall-clock ratios."""
    return {"ap_points": 100 * (a["map"] - b["map"]), "ap50_points": 100 * (a["map_50"] - b["map_50"]),
            "map_ratio": a["map"] / b["map"] if b["map"] > 0 else None,
            "wall_ratio": a["wall_s"] / b["wall_s"]}


def show(results: dict, comparisons: dict, title: str) -> None:
    rows = [[f"{name} ({r['code']})", f"{r['map']:.4f}", f"{r['map_50']:.4f}", f"{r['wall_s']:.0f} s",
             f"{r['train_img_per_s']:.2f}" if r["train_img_per_s"] else "-"] for name, r in results.items()]
    report_rows(title, ["run", "mAP", "mAP50", "wall-clock", "img/s"], rows)
    if comparisons:
        rows = [[name, f"{c['ap_points']:+.2f}", f"{c['ap50_points']:+.2f}",
                 f"{c['map_ratio']:.2f}x" if c["map_ratio"] is not None else "-", f"{c['wall_ratio']:.2f}x"]
                for name, c in comparisons.items()]
        report_rows("differences", ["", "AP pts", "AP50 pts", "mAP ratio", "time ratio"], rows)


def dataset(args, cache: Path) -> Path:
    """The tiled set of the real wheel (given, or downloaded once and checked), or of the synthetic one."""
    cache.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        wheel = synthetic_wheel(cache / "deepforest-synthetic.whl", args.tile)
    else:
        wheel = args.wheel or fetch_wheel(cache / "wheels")
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if not args.synthetic and sha256 != WHEEL_SHA256:
        raise SystemExit(f"'{wheel}' has sha256 {sha256}, not deepforest 2.1.0's ({WHEEL_SHA256})")
    name = f"deepforest_trees_{'synthetic_' if args.synthetic else ''}{args.tile}"
    return prepare_dataset(wheel.resolve(), sha256, cache / name, args.tile)


def run_one(name: str, data: Path, args, cache: Path) -> dict | None:
    """One run's result; None where it was skipped (ultralytics not installed)."""
    run_dir = (args.workdir / name).resolve()
    if name == "torchvision":
        return run_torchvision(data, args)
    if name == "ultralytics":
        return run_ultralytics(data, args, cache, run_dir)
    tree = before_tree(args.before_tree, cache, args.before) if name == "before" else ROOT
    return run_detcli(name, tree, data, args, run_dir)


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
    p.add_argument("--workers", type=int, default=2, help="data loader workers (detcli data.num_workers)")
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
    data = dataset(args, cache)
    stats = dataset_stats(data)
    print(f"data {data}: " + "; ".join(f"{s} {v['tiles']} tiles ({v['negative_tiles']} without trees), "
                                       f"{v['boxes']} boxes + {v['crowd_boxes']} crowd"
                                       for s, v in stats.items()))
    results = {name: r for name in runs if (r := run_one(name, data, args, cache)) is not None}
    comparisons = {f"{a} vs {b}": compare(results[a], results[b]) for a, b in COMPARISONS
                   if a in results and b in results}
    length = f"{args.wall_clock:g} minutes each" if args.wall_clock else f"{args.steps} steps"
    show(results, comparisons, f"from scratch, {length} x {args.batch} x {args.size} px, "
                               f"tree crowns ({stats['val']['boxes']} val boxes), {args.device}")
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "data": {"path": str(data), "source": json.loads((data / "source.json").read_text()), **stats},
              "runs": results, "comparisons": comparisons}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
