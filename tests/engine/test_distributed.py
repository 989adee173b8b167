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


def train_log_losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_two_process_resume_is_exact_with_per_rank_random_sampling(tmp_path, cache_dir):
    """Faster R-CNN samples anchors and RoIs from each process's own RNG: a two-process run killed (the whole
    process group, SIGKILL) after a checkpoint and resumed logs the losses of an uninterrupted one, which
    needs every rank's RNG state in the checkpoint, not rank 0's alone."""
    import signal
    import time

    args = [*ARGS, "head=faster_rcnn", "data.batch_size=4", "trainer.max_steps=14", "trainer.eval_interval=7",
            "trainer.checkpoint_interval=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "detcli",
                "train", *args]
    subprocess.run([*torchrun, f"hydra.run.dir={tmp_path}/whole"], env=env, capture_output=True, timeout=900, check=True)
    proc = subprocess.Popen([*torchrun, f"hydra.run.dir={tmp_path}/killed"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "killed" / "train_log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 10):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = __import__("torch").load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] < 14 and len(ckpt["rng_per_rank"]) == 2
    subprocess.run([*torchrun, f"hydra.run.dir={tmp_path}/killed", "resume=auto"], env=env, capture_output=True,
                   timeout=900, check=True)
    whole, resumed = train_log_losses(tmp_path / "whole"), train_log_losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 15))
    for step in whole:
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6), step
