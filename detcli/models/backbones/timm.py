"""Any timm model as a multi-scale backbone (features_only).

The levels handed to the neck are found by stride through timm's feature_info, not by index, so
resnets, convnexts, efficientnets and channels-last transformers (swin) all plug in the same way.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import Tensor, nn

from detcli.errors import ConfigError


class TimmBackbone(nn.Module):
    """features_only timm model -> list of feature maps at `strides`, NCHW.

    Advertises `out_channels` and `strides` (one per returned level) and the normalisation
    (`mean`, `std`, on a 0-1 pixel scale) of its pretrained config.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: str | None = None,
        strides: list[int] = (8, 16, 32),
        freeze_at: int = 0,
        freeze_bn: bool | str = "auto",
        model_kwargs: dict | None = None,
        bn_eps: float | None = None,
    ):
        super().__init__()
        self.name = name
        kwargs = dict(model_kwargs or {})
        # the levels are chosen by stride on an untrained copy; the real model builds only up to them
        info = _create(name, False, None, dict(kwargs)).feature_info
        reductions, channels = info.reduction(), info.channels()
        levels = [_level_of(stride, reductions, name) for stride in strides]
        self.body = _create(name, pretrained, weights, {**kwargs, "out_indices": tuple(levels)})
        self.indices = list(range(len(levels)))
        self.strides = [int(reductions[i]) for i in levels]
        self.out_channels = [int(channels[i]) for i in levels]
        self.channels_last_output = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.freeze_at = freeze_at
        if freeze_at > 0:
            self._freeze(freeze_at, info)
        self.freeze_bn = resolve_freeze_bn(freeze_bn, pretrained, weights)
        if self.freeze_bn:  # statistics of a small per-process batch would spoil the pretrained ones
            from timm.layers import freeze_batch_norm_2d

            self.body = freeze_batch_norm_2d(self.body)
        if bn_eps is not None:  # torchvision's COCO Faster R-CNN was trained with eps 0 in its frozen BatchNorm
            for m in self.body.modules():
                if "BatchNorm" in type(m).__name__ and hasattr(m, "eps"):
                    m.eps = float(bn_eps)
        self.no_weight_decay_names = _no_weight_decay_leaves(name, kwargs)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that the timm model keeps out of weight decay
        (position embeddings, relative position tables); features_only wrappers drop timm's own method."""
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in self.no_weight_decay_names}

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body(x)
        feats = [feats[i] for i in self.indices]
        if self.channels_last_output:  # swin & co. return (B, H, W, C)
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's features_only wrappers checkpoint each top-level module on its own; before timm 1.0.31 that
        included a stem's ReLU(inplace=True), which then overwrites the tensor saved for its recompute and
        fails in backward. The top-level in-place modules run out of place while checkpointing is on."""
        self.body.set_grad_checkpointing(enable)
        for module in self.body.children():
            if isinstance(getattr(module, "inplace", None), bool):
                if enable and module.inplace:
                    module.inplace, module._detcli_inplace = False, True
                elif not enable and getattr(module, "_detcli_inplace", False):
                    module.inplace = True
                    del module._detcli_inplace

    def _freeze(self, freeze_at: int, info) -> None:
        """Freeze the stem (everything before the first stride-4 stage) and the first `freeze_at - 1`
        stages; their BatchNorms become FrozenBatchNorm2d (timm.utils.freeze)."""
        from timm.utils import freeze

        names = [_submodule_name(self.body, m) for m in info.module_name()]
        stages = [m for m, r in zip(names, info.reduction()) if r >= 4]
        early = [m for m, r in zip(names, info.reduction()) if r < 4]
        first_top = stages[0].split(".")[0]
        stem = []
        for name, _ in self.body.named_children():
            if name == first_top:
                break
            stem.append(name)
        stem += [m for m in early if m.split(".")[0] == first_top]  # e.g. efficientnet blocks.0
        freeze(self.body, submodules=stem + stages[: freeze_at - 1])


def resolve_freeze_bn(freeze_bn: bool | str, pretrained: bool, weights: str | None) -> bool:
    """backbone.freeze_bn: auto freezes BatchNorm when weights are loaded (as torchvision and detectron2
    do when fine-tuning) and trains it from scratch."""
    if freeze_bn == "auto":
        return bool(pretrained or weights)
    if isinstance(freeze_bn, bool):
        return freeze_bn
    raise ConfigError(f"backbone.freeze_bn must be auto, true or false, got '{freeze_bn}'.")


def _no_weight_decay_leaves(name: str, kwargs: dict) -> set[str]:
    """Last components of the names timm's full model lists in no_weight_decay() (built on the meta
    device: no memory, no weights)."""
    import torch

    with torch.device("meta"):
        try:
            full = timm.create_model(name, pretrained=False, **kwargs)
        except Exception:  # noqa: BLE001 - a model that cannot be built on meta simply lists nothing
            return set()
    names = full.no_weight_decay() if hasattr(full, "no_weight_decay") else set()
    keywords = full.no_weight_decay_keywords() if hasattr(full, "no_weight_decay_keywords") else set()
    params = [n for n, _ in full.named_parameters()]
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    leaves |= {n.rsplit(".", 1)[-1] for n in params for k in keywords if k in n}
    return leaves


def _submodule_name(body: nn.Module, name: str) -> str:
    """feature_info names the original module ('stages.0'); FeatureListNet may flatten it ('stages_0')."""
    try:
        body.get_submodule(name)
        return name
    except AttributeError:
        return name.replace(".", "_")


def _level_of(stride: int, reductions: list[int], name: str) -> int:
    """Index of the last feature level with the given reduction."""
    matches = [i for i, r in enumerate(reductions) if int(r) == int(stride)]
    if not matches:
        raise ConfigError(
            f"backbone.strides: timm model '{name}' has no feature level of stride {stride}; its "
            f"levels have strides {list(reductions)}. Set backbone.strides to some of those."
        )
    return matches[-1]


def _create(name: str, pretrained: bool, weights: str | None, kwargs: dict) -> nn.Module:
    if name not in timm.list_models() and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"backbone.name: '{name}' is not a timm model. Similar names: {close}.")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"backbone.weights: file '{path}' does not exist.")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except Exception as e:
        if weights is None and pretrained:
            raise ConfigError(
                f"backbone.pretrained=true: could not fetch the pretrained weights of '{name}' "
                f"({type(e).__name__}: {e}). On an offline machine either train from scratch with "
                f"backbone.pretrained=false, or point backbone.weights=PATH at a local .pth/.safetensors file."
            ) from e
        if weights is not None:
            raise ConfigError(f"backbone.weights: could not load '{weights}' into '{name}': {e}") from e
        raise
