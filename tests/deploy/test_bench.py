"""`detcli bench` on a toy checkpoint (eager, onnxruntime, the training step; torch.compile off to stay
fast), a failing torch.compile as a failed row, the input sides, and `detcli backbones` listing timm
models with their levels built on the meta device."""

import json
import re

import pytest
import torch
from conftest import detcli
from omegaconf import OmegaConf

from detcli.cli import main
from detcli.errors import ConfigError
from detcli.tasks.bench import CompiledInference, input_sides, print_table


def test_bench_on_a_checkpoint_measures_every_run(trained_run, tmp_path):
    out = tmp_path / "bench"
    proc = detcli("bench", f"checkpoint={trained_run}/checkpoints/last.pt", "bench.batch_sizes=[1,2]",
                  "bench.image_sizes=[64]", "bench.iters=1", "bench.warmup=1", "bench.compile=false",
                  "bench.threads=1", "device=cpu", f"hydra.run.dir={out}")
    result = json.loads((out / "bench.json").read_text())
    rows = result["rows"]
    assert [(r["run"], r["batch_size"]) for r in rows] == [
        ("eager", 1), ("onnxruntime", 1), ("eager", 2), ("onnxruntime", 2), ("train step", 1), ("train step", 2)]
    for r in rows:
        assert r["status"] == "ok" and r["image_size"] == 64, r
        assert r["latency_ms"] > 0 and r["img_per_s"] > 0
        assert r["img_per_s"] == pytest.approx(r["batch_size"] * 1000 / r["latency_ms"])
    eager = {r["batch_size"]: r for r in rows if r["run"] == "eager"}
    for r in rows:
        if r["run"] == "onnxruntime":  # the ratio against eager at the same batch
            assert r["vs_eager"] == pytest.approx(r["img_per_s"] / eager[r["batch_size"]]["img_per_s"])
    assert result["model"] == "FCOSHead + FPN + resnet10t, 3 classes" and result["device"] == "cpu"
    assert result["train_precision"] == "fp32" and result["threads"] == 1
    assert "detcli bench" in proc.stdout and "onnxruntime" in proc.stdout and "train step" in proc.stdout


def test_bench_refuses_to_change_a_checkpoints_model(trained_run, tmp_path):
    proc = detcli("bench", f"checkpoint={trained_run}/checkpoints/last.pt", "head=yolox",
                  f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "head" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failing_compile_is_a_failed_row(monkeypatch, capsys):
    """No C++ compiler (or an op dynamo cannot trace): the row says why, and later rows do not retry."""
    calls = []

    def broken_compile(model, **kwargs):
        calls.append(model)

        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled = CompiledInference(torch.nn.Conv2d(3, 4, 3))
    b = OmegaConf.create({"warmup": 1, "iters": 1})
    images = torch.zeros(2, 3, 32, 32)
    rows = [compiled.row(images, b, torch.device("cpu")), compiled.row(images[:1], b, torch.device("cpu"))]
    assert len(calls) == 1
    assert [(r["run"], r["batch_size"], r["image_size"], r["status"]) for r in rows] == [
        ("torch.compile", 2, 32, "failed"), ("torch.compile", 1, 32, "failed")]
    assert rows[0]["error"] == "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    assert rows[0]["latency_ms"] is None and rows[0]["img_per_s"] is None
    print_table({"model": "m", "device": "cpu", "threads": 1, "train_precision": "fp32",
                 "rows": [{**r, "vs_eager": None} for r in rows]})
    out = capsys.readouterr().out
    assert "failed" in out  # the note column (wrapped to the console's width)
    assert "torch.compile failed: RuntimeError: InvalidCxxCompiler: No working C++ compiler found\n" in out


def test_input_sides_round_up_and_default_to_the_exported_input():
    data = OmegaConf.create({"image_size": [800, 1333], "size_divisible": 32})
    assert input_sides(None, data) == [1344]  # the square that holds [800, 1333], as detcli export makes it
    assert input_sides([64, 100, 96], data) == [64, 128, 96]
    with pytest.raises(ConfigError, match="bench.image_sizes"):
        input_sides([0], data)


def _row(stdout: str, name: str) -> str:
    rows = [line for line in stdout.splitlines() if re.match(rf"│ {re.escape(name)} +│", line)]
    assert len(rows) == 1, stdout
    return rows[0]


def test_backbones_lists_levels_and_pretrained():
    proc = detcli("backbones", "resnet*")
    row = _row(proc.stdout, "resnet18")
    assert "2:64 4:64 8:128 16:256 32:512" in row and "yes" in row
    assert "2:64 4:256 8:512 16:1024 32:2048" in _row(proc.stdout, "resnet50")
    assert "no" in _row(proc.stdout, "resnet200")  # timm publishes no weights for it
    count = re.search(r"(\d+) timm models match 'resnet\*'; (\d+) listed, (\d+) skipped", proc.stdout)
    assert count and int(count[1]) > 50 and int(count[2]) + int(count[3]) == int(count[1])


def test_backbones_pretrained_keeps_the_published_ones():
    out = detcli("backbones", "resnet2*", "--pretrained").stdout
    assert "2:64 4:256 8:512 16:1024 32:2048" in _row(out, "resnet200d") and "yes" in _row(out, "resnet200d")
    assert "│ resnet200 " not in out and "│ no " not in out
    assert re.search(r"(\d+) timm models match 'resnet2\*', (\d+) with published pretrained weights; \2 listed",
                     out)


def test_backbones_without_a_match_exits_1(capsys):
    assert main(["backbones", "resnett18"]) == 1
    err = capsys.readouterr().err
    assert "no timm model matches 'resnett18'" in err and "resnet18" in err
