"""DDP through torchrun: process-group setup, the per-rank device, and `trainer.devices=N`, which
starts torchrun itself from a single `detcli train` (one launcher level, also under Hydra's -m)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from detcli.errors import DetcliError
from detcli.runlog import best_map


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


# ---- inside a training run: each a no-op (or the local value) in a single process ---------------------------
def active() -> bool:
    """Whether this process is one of several of a torchrun job (a process group is up)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def ranks() -> int:
    return dist.get_world_size() if active() else 1


def is_main_process() -> bool:
    return rank() == 0


def agree(value: float, op: str, device: torch.device) -> float:
    """The value every rank takes: the min or max over the ranks (`op`), or rank 0's ("main")."""
    if not active():
        return value
    t = torch.tensor([float(value)], device=device)
    if op == "main":
        dist.broadcast(t, 0)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return t.item()


def reduce_min(t: torch.Tensor) -> torch.Tensor:
    """The minimum of a tensor over the ranks (in place, on its device: no host sync)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (in place)."""
    if active():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (all ranks must call it together)."""
    if ranks() == 1:
        return [obj]
    objs = [None] * ranks()
    dist.all_gather_object(objs, obj)
    return objs


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
    """(the model, the module to run): under torchrun the model with SyncBatchNorm if asked, wrapped in DDP."""
    if not active():
        return model, model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(net: nn.Module, skip: bool):
    """DDP's no_sync() for a micro-batch whose gradients are only accumulated; a no-op otherwise."""
    DDP = nn.parallel.DistributedDataParallel
    ddp = net if isinstance(net, DDP) else getattr(net, "module", None)  # the compiled wrapper holds the DDP module
    if skip and isinstance(ddp, DDP):
        return ddp.no_sync()
    return contextlib.nullcontext()
