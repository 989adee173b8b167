"""detcli data show data=... split=train n=16: what the model will see, as a PNG grid of samples
after the transforms, with the boxes and class names drawn."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.io import write_png
from torchvision.utils import make_grid

from detcli.build import instantiate_group
from detcli.data.collate import collate
from detcli.tasks.common import run_dir
from detcli.visualization.draw import draw_boxes


def run(cfg: DictConfig) -> str:
    out = run_dir()
    data = instantiate_group("data", cfg.data)
    dataset = data.dataset(cfg.split)
    g = torch.Generator().manual_seed(int(cfg.seed))
    picks = torch.randperm(len(dataset), generator=g)[: int(cfg.n)].tolist()
    samples = [dataset[(i, int(cfg.seed) * 7919 + i)] for i in picks]
    batch = collate(samples, size_divisible=1)
    drawn = []
    for image, boxes, labels in zip(batch["images"], batch["boxes"], batch["labels"]):
        keep = labels >= 0
        drawn.append(draw_boxes(image, boxes[keep], labels[keep], data.class_names, width=1))
    grid = make_grid(torch.stack(drawn), nrow=max(1, math.ceil(math.sqrt(len(drawn)))), padding=2, pad_value=255)
    path = Path(cfg.output) if cfg.output else out / f"data_show_{cfg.split}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid, str(path))
    print(f"{len(drawn)} {cfg.split} samples written to {path}")
    return str(path)
