"""Images/s of the training data loader alone (decode, transforms, collate, workers), to show whether
the loader can keep up with the model: compare with the img/s of `scripts/bench_train.py`.

    python scripts/bench_data.py                                  # the toy data, 0 / 1 / 2 workers
    python scripts/bench_data.py data=coco data.train_ann=... data.train_images=... --workers 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="detcli train overrides for the data (default: the toy set)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--out", default="runs/bench/data.json")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from rich.console import Console
    from rich.table import Table

    from detcli.config import config_dir

    rows = []
    for workers in args.workers:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*args.overrides, f"data.num_workers={workers}"])
        data = instantiate(cfg.data)
        loader = data.train_loader(data.dataset("train"), seed=0)
        it = iter(loader)
        next(it)  # workers started, first batch out
        t0, images = time.perf_counter(), 0
        for _ in range(args.batches):
            try:
                images += next(it)["images"].shape[0]
            except StopIteration:
                it = iter(loader)
        rows.append({"workers": workers, "img_per_s": images / (time.perf_counter() - t0)})
    table = Table(title=f"training data loader, batch {cfg.data.batch_size}, image_size {cfg.data.image_size}")
    table.add_column("workers", justify="right")
    table.add_column("images/s", justify="right")
    for r in rows:
        table.add_row(str(r["workers"]), f"{r['img_per_s']:.1f}")
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
