"""Stop signals sent to the whole process group (SLURM, systemd, `kill -TERM -PGID`, Ctrl+C) with loader
workers running: the main process finishes the step, saves and exits 143 / 130, and `resume=auto`
continues; workers ignore the job's signals but still go when the main process ends or crashes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import detcli

# 64 px toy images, two loader workers, no checkpoint but the one the signal asks for
GROUP = ["experiment=toy", "data.num_train=32", "data.num_val=8", "data.batch_size=4", "data.canvas=64",
         "data.image_size=64", "data.num_workers=2", "trainer.log_interval=1", "trainer.eval_interval=1000",
         "trainer.checkpoint_interval=null"]


def last_step(run: Path) -> int:
    log = run / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return max((json.loads(x)["step"] for x in lines if x.strip()), default=0)


def group_is_gone(pgid: int, timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_process_group_saves_and_resumes(tmp_path, cache_dir, sig, code):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "detcli", "train", *GROUP, "trainer.max_steps=100000",
                             f"hydra.run.dir={run}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    deadline = time.time() + 120
    while last_step(run) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    os.killpg(proc.pid, sig)  # every process of the job, as SLURM / systemd / a terminal do
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "killed by signal" not in err
    assert group_is_gone(proc.pid)  # the workers went with the main process
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert step >= 3 and last_step(run) <= step

    resumed = detcli("train", *GROUP, f"trainer.max_steps={step + 2}", f"hydra.run.dir={run}", "resume=auto")
    assert f"at step {step}" in resumed.stdout + resumed.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == step + 2


WORKERS = """
import sys, time
from torch.utils.data import DataLoader, Dataset
from detcli.data.workers import WorkerSignals

class Slow(Dataset):
    def __len__(self): return 10**6
    def __getitem__(self, i): time.sleep(0.01); return i

it = iter(DataLoader(Slow(), batch_size=2, num_workers=2, worker_init_fn=WorkerSignals()))
next(it)
print(" ".join(str(w.pid) for w in it._workers), flush=True)
if sys.argv[1] == "crash":
    raise RuntimeError("crash with the loader alive")
sys.stdin.readline()
print(sum(next(it).tolist()) >= 0, flush=True)
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in "ZX"
    except FileNotFoundError:
        return False


def exited(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while any(alive(p) for p in pids):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_workers(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """A process iterating a loader with two workers, both signalled by another process (a shell's
    kill), as a group signal is; they must still be alive."""
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    proc = subprocess.Popen([sys.executable, str(script), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    for pid in pids:
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        subprocess.run(["kill", "-INT", str(pid)], check=True)
    time.sleep(0.5)
    assert all(alive(p) for p in pids)
    return proc, pids


def test_workers_ignore_the_jobs_signals_and_go_with_their_main_process(tmp_path):
    proc, pids = start_workers(tmp_path)
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and out.strip() == "True", err  # the workers still load
    assert exited(pids)


def test_workers_exit_when_their_main_process_is_killed(tmp_path):
    proc, pids = start_workers(tmp_path)
    proc.kill()  # no shutdown, no signal to the workers: PyTorch's parent check ends them
    proc.communicate(timeout=60)
    assert exited(pids)


def test_a_crash_with_workers_running_does_not_hang(tmp_path):
    """At exit, multiprocessing terminates daemon workers with SIGTERM and waits for them: a worker that
    ignored every SIGTERM would hang the crashed process forever."""
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    proc = subprocess.run([sys.executable, str(script), "crash"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1 and "crash with the loader alive" in proc.stderr
    assert exited([int(p) for p in proc.stdout.split()])
