"""Shared by the benchmarks: the repository's root, the precisions and each head's peer, build a detcli model
from config overrides, the tables, and the ultralytics peer (an optional `bench` extra, imported lazily,
offline). The measuring itself (timing, synthetic batches, the onnxruntime session, the training step) is
detcli.deploy.benchmark, which `detcli bench` uses too.

Naming: B = images, M = boxes per image, N = boxes of the batch (B x M), H, W = image height and width.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: scripts/benchkit/ is two levels down
BENCH_CACHE = Path("runs/bench/cache")  # the benchmarks' cache, relative to the working folder
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PEERS = {"fcos": "torchvision", "yolox": "ultralytics", "faster_rcnn": "torchvision"}  # each head's peer


def compose_model(overrides: list[str], num_classes: int = 80):
    from hydra import compose, initialize_config_dir

    from detcli.build import build_model
    from detcli.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return build_model(cfg, num_classes), cfg


def default_backbone(head: str) -> str:
    """The backbone a head is benchmarked on unless --backbone says otherwise: YOLOX on CSPDarknet-s
    where detcli has that preset, everything else on resnet18."""
    from detcli.config import config_dir

    if head == "yolox" and (Path(config_dir()) / "backbone" / "cs3darknet_s.yaml").is_file():
        return "cs3darknet_s"
    return "resnet18"


def report(title: str, img_per_s: dict[str, float], extra: list[tuple[str, str]]) -> None:
    """A rich table: images/s of each contender, then the ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in img_per_s.items():
        table.add_row(f"{k} images/s", f"{v:.2f}")
    for row in extra:
        table.add_row(*row)
    Console().print(table)


def report_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A rich table of preformatted cells: the first column left-aligned, the others right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# ---- ultralytics (optional) ----------------------------------------------------------------------
def load_ultralytics(cache: Path = BENCH_CACHE):
    """The ultralytics package, kept offline and inside `cache`; None, with a message, where it is not
    installed. Its settings (read when it is first imported) are set first: no network check, no
    auto-install of requirements, no telemetry or logger integrations, and its config / weights /
    datasets / runs folders (and matplotlib's cache) under `cache/ultralytics`, never in ~."""
    if find_spec("ultralytics") is None:
        print("ultralytics is not installed (pip install -e .[bench]): its rows are skipped")
        return None
    home = (cache / "ultralytics").resolve()
    os.environ.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0", YOLO_CONFIG_DIR=str(home))
    os.environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))  # it imports matplotlib: its font cache
    import ultralytics
    import ultralytics.data.utils
    from ultralytics.utils import SETTINGS

    wanted = {"sync": False, "datasets_dir": str(home / "datasets"), "weights_dir": str(home / "weights"),
              "runs_dir": str(home / "runs"), "clearml": False, "comet": False, "dvc": False, "mlflow": False,
              "neptune": False, "raytune": False, "tensorboard": False, "wandb": False}
    SETTINGS.update({k: v for k, v in wanted.items() if k in SETTINGS})  # the keys differ between versions
    # its dataset check fetches Arial.ttf for plots (none here: plots=False); never ask the network
    ultralytics.data.utils.check_font = lambda *args, **kwargs: None
    return ultralytics


def yolov8n(num_classes: int):
    """Ultralytics' YOLOv8n built from yolov8n.yaml (random init, no weights file), with its default
    hyperparameters attached as the trainer attaches them, so that `model.loss(batch)` works."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=num_classes, verbose=False)
    model.args = get_cfg()  # ultralytics/cfg/default.yaml: box, cls, dfl gains and the rest
    return model


def ultralytics_batch(batch: dict) -> dict:
    """A synthetic_batch as ultralytics' trainer feeds its loss: img float 0-1 (B, 3, H, W), and per box
    batch_idx (N,), cls (N, 1) and bboxes (N, 4) as normalised cx, cy, w, h."""
    images, boxes = batch["images"], batch["boxes"]  # (B, 3, H, W), (B, M, 4) x1y1x2y2 pixels
    B, M = batch["labels"].shape
    H, W = images.shape[-2:]
    scale = torch.tensor([W, H, W, H], dtype=torch.float32, device=boxes.device)
    centres, sizes = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]  # (B, M, 2) each
    cxcywh = torch.cat([centres, sizes], -1)  # (B, M, 4)
    return {"img": images.float() / 255,
            "batch_idx": torch.arange(B, device=boxes.device).repeat_interleave(M).float(),  # (N,)
            "cls": batch["labels"].reshape(-1, 1).float(),  # (N, 1)
            "bboxes": (cxcywh / scale).reshape(-1, 4)}  # (N, 4)


def ultralytics_nms():
    """ultralytics' non_max_suppression: ultralytics.utils.nms in recent releases, utils.ops in older ones."""
    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:
        from ultralytics.utils.ops import non_max_suppression
    return non_max_suppression
