import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# trainer.precision=auto resolves to fp32 in the suite whatever the CPU (its pinned values are fp32); the
# tests of the bf16 path set DETCLI_CPU_BF16=1 themselves (detcli/device.py: resolve_precision)
os.environ.setdefault("DETCLI_CPU_BF16", "0")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """DETCLI_CACHE for every test: toy data is generated there, never in the user's home."""
    path = tmp_path_factory.getbasetemp() / "cache"
    path.mkdir(exist_ok=True)
    os.environ["DETCLI_CACHE"] = str(path)
    return path


# small enough for a CPU run of a few seconds, big enough to exercise batching and evaluation
TINY = ["experiment=toy", "data.num_train=32", "data.num_val=8", "data.batch_size=8", "data.num_workers=0"]


def detcli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600):
    """Run the installed CLI in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "detcli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"detcli {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cache_dir) -> Path:
    """A short toy training run shared by the eval / predict / export tests."""
    run = tmp_path_factory.mktemp("train")
    detcli("train", *TINY, "trainer.max_steps=6", "trainer.log_interval=2", f"hydra.run.dir={run}")
    return run
