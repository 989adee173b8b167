"""The device, precision and seeding of a run: resolved once from the config, shared by every layer."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from detcli.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for, but no CUDA GPU is available here; use device=cpu.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively
CPU_BF16_ENV = "DETCLI_CPU_BF16"  # 1 / 0: take the CPU as having bf16 instructions or not (tests)


def autocast_dtype(precision: str, device: torch.device | None = None):
    """The autocast dtype of a precision setting (None: fp32) for running a model (inference); `auto` is
    resolved for `device` first, with the inference rule of resolve_precision."""
    if precision == "auto":
        precision = resolve_precision(precision, device or torch.device("cpu"), inference=True)
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {[*PRECISIONS, 'auto']}, got '{precision}'.")
    return PRECISIONS[precision]


def resolve_precision(precision: str, device: torch.device, inference: bool = False) -> str:
    """A precision setting as it runs on `device`: fp32, bf16 and fp16 stay; `auto` is
    - on a CUDA GPU: bf16 where torch.cuda.is_bf16_supported(), else fp32 (training and inference);
    - on a CPU: for inference, bf16 where `cpu_bf16()` finds the instructions, else fp32; for training, fp32
      (bf16 training does not keep accuracy within 0.5 point on CPU: docs/precision.md has the figures).
    The environment variable DETCLI_CPU_BF16=1 (or 0) takes the CPU as having bf16 instructions (or not)
    whatever it has: for tests, or a machine whose flags mislead."""
    if precision != "auto":
        autocast_dtype(precision)  # the error naming the key, for a value that is not a precision
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and inference:
        return "bf16" if cpu_bf16() else "fp32"
    return "fp32"


def cpu_bf16() -> str | None:
    """Why this CPU counts as computing bf16 natively (the flag or setting that says so), else None:
    DETCLI_CPU_BF16 when set; else a CPU_BF16_FLAGS flag in /proc/cpuinfo (Linux); else torch's CPU
    capability where it names AMX or BF16 (torch.backends.cpu.get_cpu_capability())."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"the environment variable {CPU_BF16_ENV} must be 0 or 1, got '{forced}'.")
        return f"{CPU_BF16_ENV}={forced}" if forced == "1" else None
    flags = cpuinfo_flags()
    found = next((f for f in CPU_BF16_FLAGS if f in flags), None)
    if found:
        return f"{found} in /proc/cpuinfo"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"torch CPU capability {capability}" if any(k in capability.upper() for k in ("AMX", "BF16")) else None


def cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags Linux lists (the first `flags` line); empty where there is no such file."""
    try:
        text = path.read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def describe_precision(configured: str, resolved: str, device: torch.device, evaluation: str | None = None) -> str:
    """The log line's words: what the run trains (and evaluates) in and, for trainer.precision=auto, why."""
    evals = f", evaluations in {evaluation}" if evaluation and evaluation != resolved else ""
    if configured != "auto":
        return f"{resolved}{evals} (trainer.precision={configured})"
    if device.type == "cpu":
        bf16 = cpu_bf16()
        why = ("training in fp32 on a CPU (bf16 training did not keep val mAP within 0.5 point in detcli's check); "
               + (f"evaluations in bf16: the CPU has bf16 instructions ({bf16})" if bf16 else
                  f"{CPU_BF16_ENV}=0" if os.environ.get(CPU_BF16_ENV, "").strip() == "0" else
                  f"the CPU lacks bf16 instructions ({' / '.join(CPU_BF16_FLAGS)})"))
        return f"{resolved}{evals} (trainer.precision=auto: {why}; trainer.precision=bf16 trains in bf16)"
    why = f"torch.cuda.is_bf16_supported() is {resolved == 'bf16'} on {device}"
    return f"{resolved}{evals} (trainer.precision=auto: {why}; trainer.precision=fp32 forces fp32)"


def peak_memory_gb(device: torch.device) -> float:
    """CUDA's peak allocated memory on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
