"""The benchmark scripts run end to end (tiny sizes) and write their JSON."""

import json
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
