"""Shared by the benchmarks: build a detcli model from config overrides, synthetic batches, timing."""

from __future__ import annotations

import time

import torch


def compose_model(overrides: list[str], num_classes: int = 80):
    from hydra import compose, initialize_config_dir

    from detcli.build import build_model
    from detcli.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return build_model(cfg, num_classes), cfg


def synthetic_batch(batch: int, size: int, num_classes: int, boxes_per_image: int = 8, seed: int = 0) -> dict:
    """Random images (0-255) and random boxes between 16 and size/2 pixels, fixed by seed."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, boxes_per_image, 2, generator=g) * size * 0.5
    wh = torch.rand(batch, boxes_per_image, 2, generator=g) * size * 0.45 + 16
    return {
        "images": (torch.rand(batch, 3, size, size, generator=g) * 255).to(torch.uint8),
        "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], -1),
        "labels": torch.randint(0, num_classes, (batch, boxes_per_image), generator=g),
    }


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


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Seconds per call, after warmup calls, with the device synchronised around the timed loop."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters


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
