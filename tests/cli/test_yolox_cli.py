"""head=yolox's own CLI cases (train, eval, predict and export are in test_heads_cli.py): an exact resume
across the epoch where mosaic closes and the L1 term opens, and the toy budget."""

import json

import pytest
from conftest import FAST, assert_resume_is_exact, detcli

YOLOX = ["head=yolox"]


def test_resume_is_exact_across_the_close_of_mosaic(tmp_path, cache_dir):
    """4 steps per epoch, 3 epochs, mosaic + mixup in the first two, L1 on in the last: killed at step 6 and
    resumed, every step's loss equals the uninterrupted run's."""
    args = [*FAST, *YOLOX, "data.num_train=16", "data.num_workers=1", "trainer.max_steps=12", "data.mosaic=1.0",
            "data.mixup=0.5", "data.close_mosaic=1"]
    assert_resume_is_exact(tmp_path, args, 6, 12)
    l1 = {json.loads(x)["step"]: json.loads(x)["loss_l1"]
          for x in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()}
    assert all(l1[s] == 0 for s in range(1, 9)) and all(l1[s] > 0 for s in range(9, 13))


@pytest.mark.slow
def test_toy_run_reaches_map50_07_in_the_fcos_budget(tmp_path, cache_dir):
    """`detcli train experiment=toy head=yolox`: the toy preset's 300 steps, val mAP@0.5 >= 0.7."""
    detcli("train", "experiment=toy", *YOLOX, f"hydra.run.dir={tmp_path}")
    evals = [json.loads(x) for x in (tmp_path / "eval_log.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 300 and max(e["map_50"] for e in evals) >= 0.7
