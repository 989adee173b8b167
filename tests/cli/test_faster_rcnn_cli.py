"""head=faster_rcnn's own CLI cases (train, eval, predict and export are in test_heads_cli.py): an exact
resume (the RPN's and the RoI head's random sampling included) and the toy set's mAP."""

import json

import pytest
from conftest import FAST, assert_resume_is_exact, detcli

FRCNN = ["head=faster_rcnn"]


def test_resume_is_exact(tmp_path, cache_dir):
    """Killed at step 5 of 12 and resumed: every step's loss equals the uninterrupted run's (the anchor and
    RoI sampling draw from the restored RNG)."""
    assert_resume_is_exact(tmp_path, [*FAST, *FRCNN, "data.num_workers=1", "trainer.max_steps=12"], 5, 12)


@pytest.mark.slow
def test_toy_run_reaches_map50_07(tmp_path, cache_dir):
    """`detcli train experiment=toy head=faster_rcnn`: the toy preset's 300 steps, val mAP@0.5 >= 0.7
    (measured: 0.986, mAP 0.783, in 3 minutes on the 2-core CI machine)."""
    detcli("train", "experiment=toy", *FRCNN, f"hydra.run.dir={tmp_path}")
    evals = [json.loads(x) for x in (tmp_path / "eval_log.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 300 and max(e["map_50"] for e in evals) >= 0.7
