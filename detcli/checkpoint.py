"""Checkpoints: written atomically, read with torch.load(weights_only=True) (tensors and plain
containers only, so a crafted file cannot run code)."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from detcli import __version__
from detcli.errors import CheckpointError

FORMAT_VERSION = 1
# class paths that checkpoints of older detcli versions store in their config (`_target_`), and where the
# class lives now: the one place a move of a class needs a line, so old checkpoints keep loading
RENAMED = {
    "detcli.models.postprocess.FCOSPostprocess": "detcli.models.heads.fcos.FCOSPostprocess",
    "detcli.models.postprocess.DensePostprocess": "detcli.models.heads.dense.DensePostprocess",
    "detcli.engine.hooks.SweepSummary": "detcli.sweeps.SweepSummary",
}
_in_progress: set[Path] = set()  # temporary files being written, for a signal handler to remove


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """torch.save into a temporary file in the same folder, fsync, then os.replace: a crash during
    the save never leaves a corrupt file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    state = {"format_version": FORMAT_VERSION, "detcli_version": __version__, **state}
    _in_progress.add(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint '{path}' ({e.strerror or e}); the previous file "
                              f"there, if any, is unchanged.") from e
    finally:
        _in_progress.discard(tmp)
    return path


def rotate_save(state: dict, path: Path, keep_previous: bool = True) -> Path:
    """Save `path`, keeping the file it replaces as `<stem>.prev.pt` (the fallback if the new one is
    ever unreadable). The old file is renamed only after the new one is complete on disk."""
    if not keep_previous or not path.exists():
        return save_checkpoint(state, path)
    tmp = save_checkpoint(state, path.with_name(f".{path.name}.new"))
    os.replace(path, previous(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def previous(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def remove_partial() -> None:
    for tmp in list(_in_progress):
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_with_fallback(path: Path) -> tuple[dict, Path]:
    """The checkpoint at `path`, or, when it is missing or unreadable, the previous one beside it
    (with a warning naming the bad file). Never a silent restart from step 0."""
    try:
        return load_checkpoint(path), path
    except CheckpointError as e:
        prev = previous(path)
        if not prev.is_file():
            raise
        import logging

        logging.getLogger(__name__).warning("%s Falling back to the previous checkpoint '%s'.", e, prev)
        return load_checkpoint(prev), prev


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
    ckpt["config"] = renamed(ckpt["config"])
    return ckpt


def renamed(config):
    """A stored config with every `_target_` that names a moved class (RENAMED) pointed at its new place."""
    if isinstance(config, dict):
        return {k: RENAMED.get(v, v) if k == "_target_" else renamed(v) for k, v in config.items()}
    if isinstance(config, list):
        return [renamed(v) for v in config]
    return config


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
    if state["cuda"] and torch.cuda.is_available():  # a machine with fewer GPUs restores those it has
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
