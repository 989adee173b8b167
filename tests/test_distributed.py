"""DDP through torchrun on CPU (gloo): two processes match one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from conftest import detcli

# BatchNorm statistics are per process under DDP (without sync_bn): freeze them so that two processes
# compute exactly what one does
ARGS = ["experiment=toy", "data.num_train=32", "data.num_val=8", "data.canvas=64", "data.image_size=64",
        "data.num_workers=0", "trainer.log_interval=1", "trainer.max_steps=20", "trainer.eval_interval=1000",
        "backbone.freeze_at=5"]


def last_loss(run) -> float:
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()][-1]["loss"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, cache_dir):
    detcli("train", *ARGS, "data.batch_size=16", f"hydra.run.dir={tmp_path}/one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "detcli", "train",
         *ARGS, "data.batch_size=8", f"hydra.run.dir={tmp_path}/two"],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert abs(last_loss(tmp_path / "two") - last_loss(tmp_path / "one")) < 1e-4
    assert (tmp_path / "two" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_devices_option_starts_torchrun_itself(tmp_path, cache_dir):
    proc = detcli("train", *ARGS, "data.batch_size=8", "trainer.max_steps=2", "trainer.devices=2",
                  f"hydra.run.dir={tmp_path}/run")
    assert "torch.distributed.run" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
