"""precision=auto: on a CUDA GPU bf16 where is_bf16_supported(); on a CPU fp32 training and bf16 inference where
the CPU computes bf16 natively (its avx512_bf16 / amx_bf16 flags, torch's CPU capability, DETCLI_CPU_BF16), fp32
elsewhere; a named precision is kept; a toy CLI run logs and records what it resolved to (its evaluations in
the inference precision), and a resume on a machine that resolves otherwise says so."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import detcli

from detcli import device as utils
from detcli.checkpoint import load_checkpoint
from detcli.device import autocast_dtype, cpu_bf16, cpuinfo_flags, resolve_precision
from detcli.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
ROOT = Path(__file__).resolve().parents[2]
# 64 px toy images: the trainer's first lines and its checkpoint in a few seconds
FAST = ["experiment=toy", "data.num_train=16", "data.num_val=4", "data.batch_size=4", "data.canvas=64",
        "data.image_size=64", "trainer.log_interval=1", "trainer.report=false"]


@pytest.fixture
def cpu_flags(monkeypatch):
    """Sets the flags /proc/cpuinfo lists and torch's CPU capability; DETCLI_CPU_BF16 unset."""
    monkeypatch.delenv("DETCLI_CPU_BF16", raising=False)

    def set_flags(flags: set[str], capability: str = "AVX512") -> None:
        monkeypatch.setattr(utils, "cpuinfo_flags", lambda: set(flags))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)

    return set_flags


@pytest.mark.parametrize("flags, capability, expected", [
    ({"avx512f", "avx512_bf16"}, "AVX512", "bf16"),  # e.g. AMD Zen 4 / 5, Intel Cooper Lake
    ({"avx512f", "amx_bf16", "amx_tile"}, "AVX512", "bf16"),  # Intel Sapphire Rapids
    ({"avx512f", "avx512bw"}, "AVX512", "fp32"),  # AVX-512 without bf16 instructions
    ({"avx2", "fma"}, "AVX2", "fp32"),
    (set(), "DEFAULT", "fp32"),  # no /proc/cpuinfo (macOS, Windows) and nothing from torch
    (set(), "AMX", "bf16"),  # torch's capability where it names AMX
])
def test_auto_on_a_cpu_infers_as_its_bf16_instructions_allow_and_trains_in_fp32(cpu_flags, flags, capability,
                                                                               expected):
    cpu_flags(flags, capability)
    assert resolve_precision("auto", CPU, inference=True) == expected
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if expected == "bf16" else None)  # running a model
    assert resolve_precision("auto", CPU) == "fp32"  # training (scripts/check_cpu_precision.py)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_named_precision_is_kept_whatever_the_cpu(cpu_flags, precision):
    cpu_flags({"avx512_bf16"})
    assert resolve_precision(precision, CPU) == precision
    cpu_flags({"avx2"}, "AVX2")
    assert resolve_precision(precision, CPU) == precision


def test_auto_on_cuda_follows_is_bf16_supported(monkeypatch, cpu_flags):
    cpu_flags({"avx2"}, "AVX2")  # the GPU decides, not the CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", CUDA) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100, a T4
    assert resolve_precision("auto", CUDA) == "fp32"
    assert resolve_precision("fp16", CUDA) == "fp16"


def test_the_environment_variable_overrides_the_flags(monkeypatch, cpu_flags):
    cpu_flags({"avx2"}, "AVX2")
    monkeypatch.setenv("DETCLI_CPU_BF16", "1")
    assert resolve_precision("auto", CPU, inference=True) == "bf16" and cpu_bf16() == "DETCLI_CPU_BF16=1"
    cpu_flags({"avx512_bf16"})
    monkeypatch.setenv("DETCLI_CPU_BF16", "0")
    assert resolve_precision("auto", CPU, inference=True) == "fp32" and cpu_bf16() is None
    monkeypatch.setenv("DETCLI_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match="DETCLI_CPU_BF16 must be 0 or 1, got 'yes'"):
        resolve_precision("auto", CPU, inference=True)


def test_an_unknown_precision_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"trainer.precision must be one of \['fp32', 'bf16', 'fp16', 'auto'\]"):
        resolve_precision("bf32", CPU)


def test_cpuinfo_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpuinfo_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpuinfo_flags(tmp_path / "missing") == set()


def train_log(proc) -> str:
    return proc.stdout + proc.stderr


def test_the_default_precision_is_logged_first_and_recorded(tmp_path, cache_dir, monkeypatch):
    """A toy run with no trainer option on a CPU taken as having bf16: the trainer's first line says it trains
    in fp32 and evaluates in bf16, and why; its checkpoint's meta records the training precision, the EMA
    stays fp32 and no GradScaler runs. trainer.precision=bf16 trains in bf16; a resume of that run with
    trainer.precision=fp32 continues in fp32 and says so."""
    monkeypatch.setenv("DETCLI_CPU_BF16", "1")
    run = tmp_path / "auto"
    proc = detcli("train", *FAST, "trainer.max_steps=2", f"hydra.run.dir={run}")
    trainer_lines = [x for x in train_log(proc).splitlines() if "detcli.engine.trainer" in x or "precision:" in x]
    assert "precision: fp32, evaluations in bf16 (trainer.precision=auto: training in fp32 on a CPU" \
        in trainer_lines[0] and "DETCLI_CPU_BF16=1" in trainer_lines[0]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["meta"]["precision"] == "fp32" and ckpt["config"]["trainer"]["precision"] == "auto"
    assert ckpt["scaler"] == {}  # GradScaler only for fp16
    assert all(v.dtype == torch.float32 for v in ckpt["ema"].values() if v.is_floating_point())
    assert json.loads((run / "eval_log.jsonl").read_text().splitlines()[-1])["step"] == 2

    run = tmp_path / "bf16"
    detcli("train", *FAST, "trainer.max_steps=2", "trainer.precision=bf16", f"hydra.run.dir={run}")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["precision"] == "bf16"
    proc = detcli("train", *FAST, "trainer.max_steps=3", "trainer.precision=fp32",
                  f"resume={run}/checkpoints/last.pt", f"hydra.run.dir={run}")
    assert "resuming in fp32 a run trained so far in bf16 (trainer.precision=fp32)" in train_log(proc)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["precision"] == "fp32"


def test_bench_resolves_auto_on_its_device(trained_run, tmp_path, monkeypatch):
    """detcli bench of a checkpoint: the training row's precision resolved here, and the one it trained in."""
    monkeypatch.setenv("DETCLI_CPU_BF16", "1")
    out = tmp_path / "bench"
    detcli("bench", f"checkpoint={trained_run}/checkpoints/last.pt", "bench.batch_sizes=[1]",
           "bench.image_sizes=[64]", "bench.iters=1", "bench.warmup=0", "bench.compile=false", "bench.onnx=false",
           "device=cpu", f"hydra.run.dir={out}")
    result = json.loads((out / "bench.json").read_text())
    assert result["train_precision"] == "fp32" and result["train_precision_setting"] == "auto"  # CPU training
    assert result["trained_precision"] == "fp32"  # the suite's toy run: DETCLI_CPU_BF16=0 (conftest)


@pytest.mark.slow
def test_check_cpu_precision_smoke(tmp_path, cache_dir):
    """scripts/check_cpu_precision.py on bench_accuracy's synthetic set, 2 steps: fp32 and bf16 training, each
    checkpoint evaluated at fp32 and at the inference default (bf16 here: DETCLI_CPU_BF16=1), the verdicts
    printed and written; --reuse scores the finished runs again without training."""
    import os
    import subprocess

    out = tmp_path / "check.json"
    args = ["--synthetic", "--steps", "2", "--size", "128", "--batch", "2", "--workers", "0",
            "--cache", str(tmp_path / "cache"), "--workdir", str(tmp_path / "runs"), "--out", str(out)]
    env = {**os.environ, "DETCLI_CPU_BF16": "1", "PYTHONWARNINGS": "ignore"}
    script = [sys.executable, str(ROOT / "scripts" / "check_cpu_precision.py")]
    proc = subprocess.run([*script, *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    runs, evals, verdicts = result["runs"], result["evals"], result["verdicts"]
    assert runs["fp32"]["precision"] == "fp32" and runs["bf16"]["precision"] == "bf16"
    assert runs["fp32"]["steps"] == runs["bf16"]["steps"] == 2
    assert evals["fp32"]["fp32"]["precision"] == "fp32" and evals["fp32"]["default"]["precision"] == "bf16"
    assert evals["fp32"]["fp32"]["map"] == pytest.approx(runs["fp32"]["map"], abs=1e-6)  # as its run scored it
    training = verdicts[0]
    assert training["map_points"] == pytest.approx(100 * (runs["bf16"]["map"] - runs["fp32"]["map"]))
    assert training["pass"] == (abs(training["map_points"]) <= 0.5) and len(verdicts) == 3
    assert 0 <= runs["fp32"]["train_map"] <= 1 and 0 <= runs["bf16"]["train_map"] <= 1  # scored on the training tiles
    assert training["train_map_points"] == pytest.approx(100 * (runs["bf16"]["train_map"] - runs["fp32"]["train_map"]))
    assert "on the training tiles" in proc.stdout
    assert ("PASS" if training["pass"] else "FAIL") in proc.stdout and "bf16 training" in proc.stdout
    proc = subprocess.run([*script, *args, "--reuse"], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0 and json.loads(out.read_text())["runs"]["fp32"]["code"] == "reused"
    # several seeds: seed 0 reused, seed 1 trained; the verdict is on the mean difference over the seeds
    proc = subprocess.run([*script, *args, "--reuse", "--seed", "0,1"], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    seeds, summary = result["seeds"], result["summary"]
    assert seeds["0"]["runs"]["fp32"]["code"] == "reused" and seeds["1"]["runs"]["fp32"]["code"] != "reused"
    diffs = [100 * (seeds[k]["runs"]["bf16"]["map"] - seeds[k]["runs"]["fp32"]["map"]) for k in ("0", "1")]
    assert summary[0]["map_points"] == pytest.approx(diffs) and summary[0]["seeds"] == [0, 1]
    assert summary[0]["mean_points"] == pytest.approx(sum(diffs) / 2)
    fits = [seeds[k]["verdicts"][0]["train_map_points"] for k in ("0", "1")]
    assert summary[0]["train_mean_points"] == pytest.approx(sum(fits) / 2)
    assert summary[0]["pass"] == (abs(summary[0]["mean_points"]) <= 0.5) and len(summary) == 3
    assert "over 2 seed(s) [0, 1]" in proc.stdout and "mean mAP" in proc.stdout


def test_extra_level_conv_on_a_1x1_map_has_finite_bf16_gradients():
    """PyTorch's CPU bf16 conv gives NaN weight gradients now and then for a 1 x 1 input at stride 2 (P7 of a
    64 px image); the FPN's extra conv runs that case in fp32, with the fp32 result."""
    from detcli.models.necks.fpn import ExtraConv

    torch.manual_seed(0)
    conv = ExtraConv(64, 64, 3, stride=2, padding=1)
    x = torch.randn(2, 64, 1, 1).relu()
    for _ in range(30):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.backward(torch.ones_like(y))
        assert torch.isfinite(conv.weight.grad).all()
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2, 1))
