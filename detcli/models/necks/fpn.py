"""Feature Pyramid Network (Lin et al. 2017) with stride-2 extra levels: P6/P7 by convs (FCOS/RetinaNet) or P6
by max-pooling P5 (Faster R-CNN, for its RPN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ExtraConv(nn.Conv2d):
    """The stride-2 3x3 conv of an extra level. On a 1 x 1 map under CPU bf16 autocast it runs in fp32:
    PyTorch's CPU bf16 convolution (oneDNN, torch 2.13) returns NaN weight gradients now and then for a 1 x 1
    input at stride 2 (measured: 10-14 of 50 backward passes; never at 2 x 2 and up), which P7 meets on
    inputs of 64 px and less. A 1 x 1 map costs nothing in fp32."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and x.shape[-2:] == (1, 1):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class FPN(nn.Module):
    """C3..C5 -> P3..P5 (lateral 1x1 + top-down nearest upsampling + 3x3), then `extra_levels`
    stride-2 3x3 convs (P6 from P5 when extra_from="output", from C5 when "input"; ReLU before P7), or,
    with extra_from="maxpool", stride-2 max-pools (kernel 1) of the level below (Faster R-CNN's P6).

    Advertises `out_channels` (int, every level) and `strides` (one per output level).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: int = 256,
        extra_levels: int = 2,
        extra_from: str = "output",
    ):
        super().__init__()
        if extra_from not in ("output", "input", "maxpool"):
            raise ValueError(f"neck.extra_from must be 'output', 'input' or 'maxpool', got '{extra_from}'")
        self.out_channels = out_channels
        self.strides = list(in_strides) + [in_strides[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.extra_from = extra_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        first_extra_in = out_channels if extra_from == "output" else in_channels[-1]
        self.extra = nn.ModuleList(
            nn.MaxPool2d(1, 2) if extra_from == "maxpool"
            else ExtraConv(first_extra_in if i == 0 else out_channels, out_channels, 3, stride=2, padding=1)
            for i in range(extra_levels)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if self.grad_checkpointing and self.training:
            return checkpoint(self._forward, *feats, use_reentrant=False)
        return self._forward(*feats)

    def _forward(self, *feats: Tensor) -> list[Tensor]:
        inner = self.lateral[-1](feats[-1])
        outs = [self.output[-1](inner)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](inner))
        x = feats[-1] if self.extra_from == "input" else outs[-1]
        for i, layer in enumerate(self.extra):
            x = layer(x if i == 0 or self.extra_from == "maxpool" else F.relu(x))
            outs.append(x)
        return outs
