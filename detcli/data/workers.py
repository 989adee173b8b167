"""The DataLoader's worker processes: how many (`data.num_workers`, `auto` sharing this machine's CPUs),
and their signal setup (`WorkerSignals`, the loaders' worker_init_fn): SLURM, systemd, `kill -TERM -PGID`
and Ctrl+C signal every process of a job, and a stop is the main process's to handle (detcli/engine/signals.py).
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from detcli.errors import ConfigError


def worker_count(value: int | str, cap: int = 8, device=None) -> int:
    """data.num_workers: an int >= 0, or 'auto': none where the model runs on a CPU (`device`, a torch.device
    or its name; the main process loads the batches between steps: the model's threads use every core, and a
    worker process taking one of them stalls them all at each parallel region: experiment=yolox_cpu on 2 cores
    trained at 26.5 img/s without a worker and 22 with one; ultralytics' rule on a CPU too), else the CPUs this
    process may use, shared among the processes of this machine (torchrun's LOCAL_WORLD_SIZE), less one for the
    process itself, at most `cap`."""
    if value == "auto":
        if device is not None and torch.device(device).type == "cpu":
            return 0
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(0, min(cap, per_process - 1))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"data.num_workers must be an int >= 0 or auto, got {value!r}.")
    return value


class WorkerSignals:
    """worker_init_fn for DataLoader workers. A worker killed by a signal sent to the whole job makes the
    main process fail the step it is finishing (`DataLoader worker ... is killed by signal`), so workers
    ignore SIGINT, and SIGTERM unless it comes from the main process: its shutdown terminates workers
    still running, and waits for them. A worker whose main process died exits through PyTorch's own
    parent check, which needs no signal."""

    def __init__(self):
        self.main_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not hasattr(signal, "sigwaitinfo"):  # macOS: no way to see the sender, keep PyTorch's handler
            return
        # blocked here (threads started later inherit the mask), taken by a thread that can see the sender
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from, args=(self.main_pid,), name="detcli-sigterm",
                         daemon=True).start()


def _exit_on_sigterm_from(main_pid: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == main_pid:
            os._exit(0)  # as PyTorch's own worker handler does for its parent's terminate()
