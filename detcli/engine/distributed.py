"""DDP through torchrun: process-group setup, the per-rank device, and `trainer.devices=N`, which
starts torchrun itself from a single `detcli train` (one launcher level, also under Hydra's -m)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from detcli.errors import DetcliError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():  # CUDA tensors over NCCL, CPU tensors (a CPU run) over gloo
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")


def shared_run_dir() -> str:
    """A run folder name every rank agrees on (rank 0's clock), for runs without hydra.run.dir."""
    stamp = [datetime.now().strftime("%Y-%m-%d_%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    return f"runs/train/{stamp[0]}"


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def launch_torchrun(n: int, run_dir: Path) -> float:
    """Re-run this command under torchrun with n processes, writing into this job's run folder; returns
    the run's best validation mAP."""
    from hydra.core.hydra_config import HydraConfig

    # this job's own overrides (under -m: one point of the sweep), not the launching command line
    args = [a for a in HydraConfig.get().overrides.task if not a.startswith("trainer.devices=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "detcli",
           "train", *args, f"trainer.devices={n}", f"hydra.run.dir={run_dir}"]
    print(f"starting {n} processes: {' '.join(cmd[1:])}", flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        error = DetcliError(f"the {n} torchrun processes of {run_dir} exited with status {code} (their output is "
                            f"above).")
        error.exit_code = code
        raise error
    return best_map(run_dir)


def best_map(run_dir: Path) -> float:
    """The best validation mAP in a run folder's eval_log.jsonl (-1 without evaluations), the value a
    sweeper (optuna) maximises, also when the training ran in torchrun's processes."""
    path = Path(run_dir) / "eval_log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return max((float(json.loads(line)["map"]) for line in lines if line.strip()), default=-1.0)
