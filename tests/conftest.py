"""What the suite shares: the toy data cache, the CLI run in a subprocess, the toy training runs every CLI test
reads (trained once per session, `trained_run` and `toy_run`), and the helpers of the resume tests."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from forked_cli import forked_cli

ROOT = Path(__file__).resolve().parents[1]
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # `make test` runs two workers on this 2-core machine: one thread each, and for the CLI runs they start
    # (and their loader workers), so that no process waits on another's spinning threads
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# trainer.precision=auto resolves to fp32 in the suite whatever the CPU (its pinned values are fp32); the
# tests of the bf16 path set DETCLI_CPU_BF16=1 themselves (detcli/device.py: resolve_precision)
os.environ.setdefault("DETCLI_CPU_BF16", "0")


def session_root(tmp_path_factory) -> Path:
    """This test session's folder: under pytest-xdist the one above every worker's own, so that the workers
    share the toy data and the toy runs instead of each making its own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """DETCLI_CACHE for every test: toy data is generated there, never in the user's home (the generator
    writes a set into a temporary folder and renames it: workers may race for the same set)."""
    path = session_root(tmp_path_factory) / "cache"
    path.mkdir(exist_ok=True)
    os.environ["DETCLI_CACHE"] = str(path)
    return path


def shared_run(tmp_path_factory, name: str, *args: str) -> Path:
    """The folder of `detcli train *args`, trained once per session by whichever worker asks first."""
    run = session_root(tmp_path_factory) / "runs" / name
    run.parent.mkdir(exist_ok=True)
    with FileLock(f"{run}.lock"):
        if not (run / "checkpoints" / "last.pt").is_file():
            detcli("train", *args, f"hydra.run.dir={run}")
    return run


# small enough for a CPU run of a few seconds, big enough to exercise batching and evaluation
# (no end-of-training report: only `trained_run`'s is read, by tests/visualization/test_report.py)
TINY = ["experiment=toy", "data.num_train=32", "data.num_val=8", "data.batch_size=8", "data.num_workers=0",
        "trainer.report=false"]


def detcli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600):
    """Run the CLI in a process of its own, as a user would: `detcli.cli.main(args)` in a child of a fork server
    that has imported torch, torchvision, timm and detcli once (a fresh `python -m detcli` spends ~3 s of CPU on
    those imports, half of this suite's time). DETCLI_TEST_EXEC=1 starts `python -m detcli` instead."""
    # a wide console: rich wraps table cells (a long tmp path) at the default 80 columns of a pipe
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    if os.environ.get("DETCLI_TEST_EXEC") == "1":
        proc = subprocess.run([sys.executable, "-m", "detcli", *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=timeout, check=False)
    else:
        proc = forked_cli(list(args), env, cwd, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"detcli {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# the postprocess of `toy_run` keeps candidates down to this score: a 6-step YOLOX scores about 1e-4 (its prior
# squared), under its default threshold; an exported graph bakes it in and predict asks for the same
TOY_THRESH = "1e-05"


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory, cache_dir):
    """`toy_run(head)`: the run folder of a 6-step toy training of `head` (TINY), trained once per session and
    shared by the CLI tests of every head (eval, predict, export, the ONNX backend). YOLOX's with box voting
    (the small presets' postprocess): an exported graph must vote as eager code does."""
    runs: dict[str, Path] = {}

    def run(head: str) -> Path:
        if head not in runs:
            vote = ["postprocess.vote_iou=0.6"] if head == "yolox" else []
            runs[head] = shared_run(tmp_path_factory, f"toy_{head}", *TINY, f"head={head}", "trainer.max_steps=6",
                                    "trainer.log_interval=2", f"postprocess.score_thresh={TOY_THRESH}", *vote)
        return runs[head]

    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cache_dir) -> Path:
    """A short toy training run shared by the eval / predict / export tests."""
    return shared_run(tmp_path_factory, "trained", *TINY, "trainer.report=true", "trainer.max_steps=6",
                      "trainer.log_interval=2")


# 64 px toy images, a checkpoint after every step: fast, and any step can be resumed from
FAST = ["experiment=toy", "data.num_train=32", "data.num_val=8", "data.batch_size=4", "data.canvas=64",
        "data.image_size=64", "trainer.log_interval=1", "trainer.eval_interval=1000", "trainer.checkpoint_interval=1",
        "trainer.report=false"]


def losses(run: Path) -> dict[int, float]:
    """step -> loss of a run's train_log.jsonl (the last line of a step wins, as after a resume)."""
    out = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r["loss"]
    return out


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detcli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    log = run / "train_log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and any(json.loads(x)["step"] >= step for x in log.read_text().splitlines() if x):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def assert_resume_is_exact(tmp_path: Path, args: list[str], kill_at: int, steps: int) -> None:
    """A run killed with SIGKILL after step `kill_at` and resumed logs the same loss at every one of its
    `steps` as an uninterrupted run ({tmp_path}/whole and {tmp_path}/killed)."""
    # the uninterrupted run needs no checkpoint between its evaluations (Hydra takes the last value of a key)
    detcli("train", *args, "trainer.checkpoint_interval=null", f"hydra.run.dir={tmp_path}/whole")
    proc = start(*args, f"hydra.run.dir={tmp_path}/killed")
    wait_for_step(tmp_path / "killed", kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert losses(tmp_path / "killed").keys() != set(range(1, steps + 1))
    detcli("train", *args, f"hydra.run.dir={tmp_path}/killed", "resume=auto")
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6), step
