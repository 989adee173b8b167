"""The accuracy benchmark's peers (scripts/bench_accuracy.py): torchvision's FCOS trained by its reference
recipe in this process, and ultralytics' YOLOv8n trained and run by ultralytics itself on the YOLO-format
view of the set; both sides' detections are scored by detcli's evaluator on the same gt (`coco_map`).

Naming: n = boxes of an image.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from benchkit.common import load_ultralytics
from benchkit.datasets import read_split, yolo_view
from benchkit.torchvision_models import torchvision_fcos


# ---- torchvision -----------------------------------------------------------------------------------
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

    pairs = list(pairs)  # read twice below: a zip or a generator would be empty the second time
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
                device=ultralytics_device(args.device), pretrained=False, plots=False,
                **({"workers": args.workers} if args.workers is not None else {}),
                amp=args.device.startswith("cuda"), val=False, project=str(run_dir.parent), name=run_dir.name,
                exist_ok=True, seed=getattr(args, "seed", 0), **({"time": args.wall_clock / 60} if args.wall_clock else {}))
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
