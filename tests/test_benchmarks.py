"""The benchmark scripts run end to end (tiny sizes) and write their JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("bench_train.py", ["--size", "64", "--batch", "2", "--iters", "1", "--rounds", "1"]),
    ("bench_infer.py", ["--size", "64", "--batch", "2", "--iters", "1", "--rounds", "1"]),
    ("bench_memory.py", ["--backbone", "resnet18", "--size", "64", "--batch", "1", "--iters", "1"]),
    ("bench_data.py", ["data.num_train=32", "data.num_val=8", "--workers", "0", "--batches", "2"]),
])
def test_benchmark_runs(script, args, tmp_path, cache_dir):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("source", ["synthetic", "wheel"])
def test_accuracy_benchmark_runs(source, tmp_path):
    """before / after / torchvision on a few steps, never downloading: a generated stand-in for the
    deepforest wheel, or the real wheel where DETCLI_DEEPFOREST_WHEEL names it. The current tree stands
    in for the 'before' checkout, so no git worktree is made."""
    if source == "synthetic":
        data = ["--synthetic"]
    else:
        wheel = os.environ.get("DETCLI_DEEPFOREST_WHEEL", "")
        if not Path(wheel).is_file():
            pytest.skip("set DETCLI_DEEPFOREST_WHEEL to deepforest-2.1.0-py3-none-any.whl to run this case")
        data = ["--wheel", wheel]
    out = tmp_path / "out.json"
    args = [*data, "--steps", "2", "--batch", "2", "--size", "64", "--workers", "0", "--device", "cpu",
            "--before-tree", str(ROOT), "--cache", str(tmp_path / "cache"),
            "--workdir", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_accuracy.py"), *args],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"before", "after", "torchvision"}
    assert set(result["comparisons"]) == {"after vs before", "after vs torchvision"}
    assert result["data"]["train"]["boxes"] > 0 and result["data"]["val"]["boxes"] > 0
