"""`weights=`: the weights a model starts from (`detcli train`) or is scored with (`detcli eval` / `predict` /
`export`, in place of `checkpoint=`), with the classes of its class rows:
- `torchvision:<WeightsEnum>` (torchvision's COCO FCOS / Faster R-CNN, detcli/weights/torchvision.py);
- a detcli checkpoint (`best.pt` of another run, any classes);
- a local `.pth` / `.safetensors` of either kind: a torchvision detector's state dict, or detcli's (a bare
  state dict, or a checkpoint's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from detcli.checkpoint import inference_weights, load_checkpoint
from detcli.errors import CheckpointError, ConfigError
from detcli.weights import torchvision as tv

PREFIX = "torchvision:"


@dataclass
class Weights:
    """State dict in detcli's names; the class names of its class rows (None: unknown, a bare state dict);
    the stored config of a detcli checkpoint, or the torchvision architecture it is of."""

    source: str
    state: dict[str, Tensor]
    class_names: list[str] | None
    cat_ids: list[int] | None = None
    config: dict | None = None
    architecture: tv.Architecture | None = None
    meta: dict = field(default_factory=dict)


def read_weights(spec: str, key: str = "weights") -> Weights:
    """The weights `spec` names; `key`: the config key that gave it (weights, checkpoint), for the messages."""
    spec = str(spec)
    if spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        state, categories, arch = tv.fetch(name)
        return _torchvision(spec, tv.convert(state, categories, arch, spec))
    path = Path(spec).expanduser()
    if not path.is_file():
        if key != "weights":
            raise CheckpointError(f"{key} '{path}' does not exist.")
        raise ConfigError(f"weights='{spec}': no such file. Give torchvision:<WeightsEnum> (e.g. "
                          f"torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1), a detcli checkpoint (best.pt), or a "
                          f"local .pth / .safetensors state dict.")
    obj = _read_file(path, key)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:  # a detcli checkpoint
        ckpt = load_checkpoint(path)
        meta = ckpt["meta"]
        return Weights(spec, inference_weights(ckpt), list(meta["class_names"]), list(meta["cat_ids"]),
                       ckpt["config"], meta=dict(meta))
    state = _state_dict(obj, path, key)
    arch = tv.architecture_of(state)
    if arch is not None:
        return _torchvision(spec, tv.convert(state, None, arch, spec))
    if not any(k.startswith(("backbone.", "neck.", "head.")) for k in state):
        raise CheckpointError(f"{key}='{spec}': neither a torchvision FCOS / Faster R-CNN state dict nor "
                              f"detcli's (its first keys: {list(state)[:4]}).")
    return Weights(spec, state, None)


def _torchvision(spec: str, c: tv.Converted) -> Weights:
    return Weights(spec, c.state, c.class_names, c.cat_ids, architecture=c.architecture)


def _read_file(path: Path, key: str):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{key}='{path}' cannot be read ({type(e).__name__}: {str(e)[:300]}); it may be "
                              f"truncated, not a PyTorch weights file, or a training script's checkpoint holding "
                              f"other Python objects (torchvision's references save argparse arguments): save "
                              f"its state dict alone, torch.save(ckpt['model'], 'model.pth'), and give that.") from e


def _state_dict(obj, path: Path, key: str) -> dict[str, Tensor]:
    """The tensors of a file: a state dict, or one under 'model' / 'state_dict' (a training script's save)."""
    if isinstance(obj, dict):
        for inner in ("model", "state_dict"):
            if isinstance(obj.get(inner), dict):
                obj = obj[inner]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{key}='{path}' holds no state dict (a dict of tensors, or one under 'model' or "
                              f"'state_dict').")
    return obj
