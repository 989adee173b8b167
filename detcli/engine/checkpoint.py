"""Checkpoints: written atomically, read with torch.load(weights_only=True) (tensors and plain
containers only, so a crafted file cannot run code)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from detcli import __version__
from detcli.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """torch.save into a temporary file in the same folder, fsync, then os.replace: a crash during
    the save never leaves a corrupt file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    state = {"format_version": FORMAT_VERSION, "detcli_version": __version__, **state}
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint '{path}' ({e.strerror or e}); the previous file "
                              f"there, if any, is unchanged.") from e
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {str(e)[:300]}); it may be "
                              f"truncated, corrupt, or not a detcli checkpoint.") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"'{path}' is not a detcli checkpoint (no 'model' and 'config' entries).")
    return ckpt


def inference_weights(ckpt: dict) -> dict:
    """The EMA weights when the run kept them, else the raw model's."""
    return ckpt.get("ema") or ckpt["model"]


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
